//! Power of two choices (`random_two`): draw two servers at random, in proportion to
//! their weights, and take the one with less in flight per unit of weight. It spreads
//! load nearly as well as least connections while never sending a burst of new
//! connections to the one server that looked idlest a moment ago (Mitzenmacher; the
//! default of Linkerd and of Envoy's `least_request`).

use super::{Balancer, Hint, Server};

#[derive(Debug, Default)]
pub struct RandomTwo;

impl Balancer for RandomTwo {
    fn pick(
        &self,
        servers: &[Server],
        _hint: &Hint,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let weight = |i: usize| u64::from(servers[i].weight.max(1));
        let total: u64 = (0..servers.len())
            .filter(|&i| eligible(i))
            .map(weight)
            .sum();
        if total == 0 {
            return None;
        }
        let first = draw(servers.len(), total, &|i| eligible(i), &weight)?;
        let rest = total - weight(first);
        if rest == 0 {
            return Some(first);
        }
        let second = draw(servers.len(), rest, &|i| i != first && eligible(i), &weight)?;
        // active/weight, compared without division; a tie keeps the first draw.
        let load = |i: usize| servers[i].active() as u64;
        if load(second) * weight(first) < load(first) * weight(second) {
            Some(second)
        } else {
            Some(first)
        }
    }
}

/// One server among those `allowed`, drawn with probability weight / `total`.
fn draw(
    n: usize,
    total: u64,
    allowed: &dyn Fn(usize) -> bool,
    weight: &dyn Fn(usize) -> u64,
) -> Option<usize> {
    let mut ticket = rand::random_range(0..total);
    (0..n).filter(|&i| allowed(i)).find(|&i| {
        let w = weight(i);
        if ticket < w {
            return true;
        }
        ticket -= w;
        false
    })
}

#[cfg(test)]
mod tests {
    use super::super::servers;
    use super::*;

    fn shares(s: &[Server], picks: usize, eligible: &dyn Fn(usize) -> bool) -> Vec<usize> {
        let mut counts = vec![0; s.len()];
        for _ in 0..picks {
            counts[RandomTwo.pick(s, &Hint::default(), eligible).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn idle_servers_share_by_weight() {
        // With nothing in flight every comparison ties, so the first draw decides and
        // the shares follow the weights: 1:1:2 over 40k picks is 10k:10k:20k, ±5%.
        let s = servers(&[1, 1, 2]);
        let counts = shares(&s, 40_000, &|_| true);
        for (got, want) in counts.iter().zip([10_000, 10_000, 20_000]) {
            assert!(got.abs_diff(want) < want / 20, "{counts:?}");
        }
    }

    #[test]
    fn the_busier_of_two_loses() {
        // Server 0 carries 10 in flight: it wins only when drawn twice, which two
        // distinct draws never do, so it is never picked while another is eligible.
        let s = servers(&[1, 1, 1]);
        let _busy: Vec<_> = (0..10).map(|_| s[0].track()).collect();
        let counts = shares(&s, 3_000, &|_| true);
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1] > 1_000 && counts[2] > 1_000, "{counts:?}");
    }

    #[test]
    fn only_eligible_servers_are_drawn() {
        let s = servers(&[1, 1, 1]);
        let counts = shares(&s, 1_000, &|i| i != 1);
        assert_eq!(counts[1], 0);
        assert_eq!(shares(&s, 10, &|i| i == 2), [0, 0, 10]);
        assert_eq!(RandomTwo.pick(&s, &Hint::default(), &|_| false), None);
    }
}
