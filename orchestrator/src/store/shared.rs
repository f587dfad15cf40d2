//! A map whose values are shared (`Arc`) and copied only when written while shared.
//!
//! The leader's orchestration round and the snapshot thread work on a copy of the state, so that
//! they do not hold the lock that applying needs. With the values shared, that copy costs a map
//! of pointers: at 10,000 nodes and 100,000 tasks, copying the nodes themselves (labels and all)
//! and dropping the copy again was a tenth of the leader's CPU.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Reads go through `Deref` to the map of pointers, or through [`SharedMap::values`],
/// [`SharedMap::get`] and [`SharedMap::iter`], which yield the values themselves. It serializes
/// as a plain map of the values (serde's `rc` support; a deserialized value is its own).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SharedMap<K: Ord, V>(BTreeMap<K, Arc<V>>);

impl<K: Ord, V: Clone> SharedMap<K, V> {
    /// The values in key order. (Shadows the map's own, which yields the shared pointers.)
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + Clone + '_ {
        self.0.values().map(Arc::as_ref)
    }

    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.0.get(key).map(Arc::as_ref)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + Clone + '_ {
        self.0.iter().map(|(key, value)| (key, value.as_ref()))
    }

    /// The value, for changing it: copied first if a copy of the map shares it.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.0.get_mut(key).map(Arc::make_mut)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<Arc<V>> {
        self.0.insert(key, Arc::new(value))
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
    {
        self.0.remove(key)
    }
}

impl<K: Ord, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        SharedMap(BTreeMap::new())
    }
}

impl<K: Ord, V> Deref for SharedMap<K, V> {
    type Target = BTreeMap<K, Arc<V>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SharedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        SharedMap(iter.into_iter().map(|(key, value)| (key, Arc::new(value))).collect())
    }
}

impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for SharedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_shares_values_until_one_side_writes_and_serializes_as_a_plain_map() {
        let mut map: SharedMap<String, Vec<u32>> =
            [("a".to_string(), vec![1]), ("b".to_string(), vec![2])].into_iter().collect();
        let copy = map.clone();
        assert!(Arc::ptr_eq(&map["a"], &copy["a"]), "a copy shares the values");
        map.get_mut("a").expect("a").push(9);
        assert_eq!(map.get("a"), Some(&vec![1, 9]));
        assert_eq!(copy.get("a"), Some(&vec![1]), "the copy keeps what it had");
        assert!(Arc::ptr_eq(&map["b"], &copy["b"]), "values not written stay shared");
        assert!(map.get_mut("c").is_none());

        let json = serde_json::to_string(&map).expect("encodes");
        assert_eq!(json, r#"{"a":[1,9],"b":[2]}"#);
        let back: SharedMap<String, Vec<u32>> = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, map);
        assert_eq!(map.remove("b").as_deref(), Some(&vec![2]));
        assert_eq!(map.values().collect::<Vec<_>>(), [&vec![1, 9]]);
    }
}
