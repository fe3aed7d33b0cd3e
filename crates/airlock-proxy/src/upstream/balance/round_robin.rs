//! Weighted round robin without a lock: the smooth interleaving (nginx's algorithm) is
//! computed once, and picks walk it with an atomic cursor.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, Hint, Server};

#[derive(Debug)]
pub struct RoundRobin {
    /// Server indexes in smooth weighted order; its length is the sum of the weights.
    order: Vec<usize>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(servers: &[Server]) -> Self {
        let weights: Vec<i64> = servers.iter().map(|s| i64::from(s.weight.max(1))).collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
                .expect("a pool has at least one server");
            current[best] -= total;
            order.push(best);
        }
        Self {
            order,
            next: AtomicUsize::new(0),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(
        &self,
        _servers: &[Server],
        _hint: &Hint,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        // Skipped slots consume the cursor too, so the server after a down one does not
        // inherit its share.
        (0..self.order.len())
            .map(|_| self.order[self.next.fetch_add(1, Ordering::Relaxed) % self.order.len()])
            .find(|&i| eligible(i))
    }
}

#[cfg(test)]
mod tests {
    use super::super::servers;
    use super::*;

    fn picks(
        rr: &RoundRobin,
        s: &[Server],
        n: usize,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Vec<usize> {
        (0..n)
            .map(|_| rr.pick(s, &Hint::default(), eligible).unwrap())
            .collect()
    }

    #[test]
    fn equal_weights_alternate() {
        let s = servers(&[1, 1, 1]);
        let rr = RoundRobin::new(&s);
        assert_eq!(picks(&rr, &s, 6, &|_| true), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_smooth_and_proportional() {
        let s = servers(&[5, 1, 1]);
        let rr = RoundRobin::new(&s);
        // nginx's smooth sequence for 5:1:1.
        assert_eq!(picks(&rr, &s, 7, &|_| true), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn skips_ineligible_servers_and_reports_none_when_all_are() {
        let s = servers(&[1, 1, 1]);
        let rr = RoundRobin::new(&s);
        assert_eq!(picks(&rr, &s, 4, &|i| i != 1), [0, 2, 0, 2]);
        assert_eq!(rr.pick(&s, &Hint::default(), &|_| false), None);
    }
}
