//! Rows a read model wrote, kept between batches so the next batch need not load
//! them again. A projection's rows change only through its own batches, so a cached
//! row equals the stored one as long as every batch since it was cached committed
//! through this cache; any doubt (a failed batch, another writer) clears it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Keys are ids and codes read from our own log, so a fast seeded hash is enough
/// (SipHash showed up in rebuild profiles).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A bounded cache with two generations: entries are looked up in both, inserted
/// into the young one, and when the young one is full the old one is dropped and
/// the young one becomes old. That approximates least-recently-used at O(1) per
/// operation without per-entry bookkeeping.
pub(crate) struct RowCache<K, V> {
    young: FastMap<K, V>,
    old: FastMap<K, V>,
    generation_max_rows: usize,
}

impl<K: Eq + Hash, V> RowCache<K, V> {
    /// A cache of at most `max_rows` rows.
    pub(crate) fn new(max_rows: usize) -> Self {
        RowCache {
            young: FastMap::default(),
            old: FastMap::default(),
            generation_max_rows: (max_rows / 2).max(1),
        }
    }

    /// Takes a row out of the cache (it comes back with [`RowCache::put`] once the
    /// batch that changes it has committed).
    pub(crate) fn take<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.young.remove(key).or_else(|| self.old.remove(key))
    }

    pub(crate) fn put(&mut self, key: K, value: V) {
        if self.young.len() >= self.generation_max_rows {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
    }

    pub(crate) fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }
}

/// The rows of one table (or one entity) that a batch works on: taken from the
/// cache, known to be new, or loaded once from the database. After the batch commits
/// they go back into the cache; if it does not, everything cached is forgotten.
pub(crate) struct BatchRows<K, V> {
    cache: RowCache<K, V>,
    rows: FastMap<K, Option<V>>,
    /// Keys whose rows must be loaded before the fold.
    missing: Vec<K>,
}

impl<K: Eq + Hash + Clone, V> BatchRows<K, V> {
    pub(crate) fn new(cache_max_rows: usize) -> Self {
        BatchRows {
            cache: RowCache::new(cache_max_rows),
            rows: FastMap::default(),
            missing: Vec::new(),
        }
    }

    /// Notes that the batch touches `key`; `is_new` when the batch holds the first
    /// event of the row's stream, so no stored row can exist.
    pub(crate) fn touch<Q>(&mut self, key: &Q, is_new: bool)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.rows.contains_key(key) {
            return;
        }
        match self.cache.take(key) {
            Some(row) => {
                self.rows.insert(key.to_owned(), Some(row));
            }
            None if is_new => {
                self.rows.insert(key.to_owned(), None);
            }
            None => {
                self.rows.insert(key.to_owned(), None);
                self.missing.push(key.to_owned());
            }
        }
    }

    /// Whether touched rows are waiting to be loaded.
    pub(crate) fn needs_load(&self) -> bool {
        !self.missing.is_empty()
    }

    /// The keys to load (each once), emptied by this call.
    pub(crate) fn take_missing(&mut self) -> Vec<K> {
        std::mem::take(&mut self.missing)
    }

    /// A row loaded from the database.
    pub(crate) fn loaded(&mut self, key: K, row: V) {
        self.rows.insert(key, Some(row));
    }

    /// The row of a touched key (`None` if it does not exist yet).
    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rows.get_mut(key)
    }

    /// Changes every touched row in place.
    pub(crate) fn for_each_mut(&mut self, mut change: impl FnMut(&mut V)) {
        for row in self.rows.values_mut().flatten() {
            change(row);
        }
    }

    /// Drops the cached row of a key the batch did not touch (its stored row is
    /// being deleted without being loaded).
    pub(crate) fn evict<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.take(key);
    }

    /// Every touched row that exists after the fold.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.rows
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The batch committed: its rows are what the database holds now.
    pub(crate) fn committed(&mut self) {
        for (key, row) in self.rows.drain() {
            if let Some(row) = row {
                self.cache.put(key, row);
            }
        }
        self.missing.clear();
    }

    /// The batch did not commit, or another writer may have changed the table.
    pub(crate) fn forget(&mut self) {
        self.rows.clear();
        self.missing.clear();
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_drops_its_oldest_generation() {
        let mut cache = RowCache::new(4);
        for i in 0..4 {
            cache.put(i, i * 10);
        }
        // 0 and 1 went to the old generation when 2 arrived, then were dropped at 4.
        cache.put(4, 40);
        assert_eq!(cache.take(&0), None);
        assert_eq!(cache.take(&2), Some(20));
        assert_eq!(cache.take(&4), Some(40));
        assert_eq!(cache.take(&4), None);
    }
}
