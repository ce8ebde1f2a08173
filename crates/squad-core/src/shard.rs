//! `I/N` shards: the questions whose position mod N == I. squad-ingest, qa-features and
//! qa-eval all cut by the same rule, so shards taken at any stage partition the same set and
//! merge back into the unsharded result.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub fn contains(&self, position: usize) -> bool {
        position % self.count == self.index
    }

    /// The shard's items of a list in position order.
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        (items.into_iter().enumerate())
            .filter(|(position, _)| self.contains(*position))
            .map(|(_, item)| item)
            .collect()
    }

    /// Position within the shard of the kept `position` (`contains(position)` holds).
    pub fn local(&self, position: usize) -> usize {
        position / self.count
    }

    /// The original position of the shard's `local`-th item.
    pub fn global(&self, local: usize) -> usize {
        self.index + local * self.count
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("shard `{s}`: expected I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!(
            "1/4".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 4 }
        );
        assert!("4/4".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }

    #[test]
    fn local_and_global_positions_round_trip() {
        let s = Shard { index: 2, count: 3 };
        let kept = s.select((0..12usize).collect());
        assert_eq!(kept, [2, 5, 8, 11]);
        for (local, &p) in kept.iter().enumerate() {
            assert_eq!(s.local(p), local);
            assert_eq!(s.global(local), p);
        }
    }
}
