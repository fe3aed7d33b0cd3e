//! Least connections, weighted: the server with the fewest live tunnels plus in-flight
//! requests per unit of weight. Ties go round robin so equal servers share the load.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, Hint, Server};

#[derive(Debug, Default)]
pub struct LeastConn {
    next: AtomicUsize,
}

impl Balancer for LeastConn {
    fn pick(
        &self,
        servers: &[Server],
        _hint: &Hint,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !eligible(i) {
                continue;
            }
            let active = servers[i].active() as u64;
            let weight = u64::from(servers[i].weight.max(1));
            // active/weight < best_active/best_weight, without division.
            if best.is_none_or(|(_, ba, bw)| active * bw < ba * weight) {
                best = Some((i, active, weight));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::servers;
    use super::*;

    #[test]
    fn picks_the_least_loaded_per_weight() {
        let s = servers(&[1, 1, 2]);
        let _a = [
            s[0].track(),
            s[0].track(),
            s[1].track(),
            s[2].track(),
            s[2].track(),
        ];
        // loads per weight: 2, 1, 1 -> servers 1 and 2 tie; both must be chosen over time.
        let lc = LeastConn::default();
        let picks: Vec<_> = (0..4)
            .map(|_| lc.pick(&s, &Hint::default(), &|_| true).unwrap())
            .collect();
        assert!(picks.iter().all(|&i| i != 0), "{picks:?}");
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
    }

    #[test]
    fn released_connections_count_down() {
        let s = servers(&[1, 1]);
        let lc = LeastConn::default();
        let busy = s[0].track();
        assert_eq!(lc.pick(&s, &Hint::default(), &|_| true), Some(1));
        assert_eq!(lc.pick(&s, &Hint::default(), &|_| true), Some(1));
        drop(busy);
        let _other = s[1].track();
        assert_eq!(lc.pick(&s, &Hint::default(), &|_| true), Some(0));
        assert_eq!(lc.pick(&s, &Hint::default(), &|i| i == 1), Some(1));
        assert_eq!(lc.pick(&s, &Hint::default(), &|_| false), None);
    }
}
