//! Which questions to keep: an article range, then the first N, then one shard of those.
//! Positions count questions in file order after the article filter, so the shards of a
//! selection partition it exactly.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use squad_core::config::ArticleRange;

/// `I/N`: keep the questions whose position mod N == I.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Selection {
    #[serde(serialize_with = "display_opt")]
    pub articles: Option<ArticleRange>,
    pub limit: Option<usize>,
    #[serde(serialize_with = "display_opt")]
    pub shard: Option<Shard>,
}

fn display_opt<T: fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

impl Selection {
    pub fn keeps_article(&self, article: usize) -> bool {
        self.articles.is_none_or(|r| r.contains(article))
    }

    /// `position`: index of the question among those of the kept articles.
    pub fn keeps_position(&self, position: usize) -> bool {
        self.limit.is_none_or(|n| position < n)
            && self.shard.is_none_or(|s| position % s.count == s.index)
    }

    /// No question at or after `position` can be kept.
    pub fn exhausted(&self, position: usize) -> bool {
        self.limit.is_some_and(|n| position >= n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_a_limited_selection() {
        let whole = Selection {
            limit: Some(10),
            ..Default::default()
        };
        let kept: Vec<usize> = (0..20).filter(|&p| whole.keeps_position(p)).collect();
        let mut union: Vec<usize> = (0..3)
            .flat_map(|i| {
                let s = Selection {
                    shard: Some(Shard { index: i, count: 3 }),
                    ..whole
                };
                (0..20).filter(move |&p| s.keeps_position(p))
            })
            .collect();
        union.sort();
        assert_eq!(kept, union);
    }

    #[test]
    fn shard_parsing() {
        assert_eq!(
            "1/4".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 4 }
        );
        assert!("4/4".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }
}
