//! Forgetting old entries of the in-memory maps without rescanning live ones on every call.
//!
//! Pruning a map each time it is over a fixed size rescans every entry on every insert once
//! that many are still live: `make bench` issues 30 000 login codes within the codes' lifetime,
//! and the sandbox spent each call scanning all of them (quadratic, a core for minutes). Here
//! the next prune waits until the map has doubled what the last one kept.

use std::{collections::HashMap, hash::Hash};

/// When a map is pruned next.
#[derive(Debug, Default)]
pub struct Pruning {
    at: usize,
}

impl Pruning {
    /// Keeps only what `keep` keeps, once `map` has more than `floor` entries and at least
    /// twice what the last prune left: amortised O(1) per insert.
    pub fn run<K: Eq + Hash, V>(
        &mut self,
        map: &mut HashMap<K, V>,
        floor: usize,
        keep: impl FnMut(&K, &mut V) -> bool,
    ) {
        if map.len() <= self.at.max(floor) {
            return;
        }
        map.retain(keep);
        self.at = map.len().saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prunes_again_only_once_the_survivors_doubled() {
        let mut map: HashMap<u32, bool> = HashMap::new();
        let mut pruning = Pruning::default();
        let mut scans = 0;
        // 10 000 live entries, inserted one at a time with a prune attempt before each.
        for n in 0..10_000 {
            pruning.run(&mut map, 100, |_, _| {
                scans += 1;
                true
            });
            map.insert(n, true);
        }
        // Doubling: prunes at 101, 202, 404, ... entries, about 2 × 10 000 scans in all,
        // where pruning at every insert over the floor would scan about 50 million.
        assert!(scans < 30_000, "{scans} entries scanned");
        // What is dead goes at the next prune.
        for v in map.values_mut() {
            *v = false;
        }
        for n in 10_000..40_000 {
            pruning.run(&mut map, 100, |_, live| *live);
            map.insert(n, true);
        }
        assert!(map.len() < 40_000, "the dead entries were pruned");
        assert!(map.values().filter(|live| !**live).count() == 0);
    }
}
