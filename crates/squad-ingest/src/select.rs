//! Which questions to keep: an article range, then the first N, then one shard of those.
//! Positions count questions in file order after the article filter, so the shards of a
//! selection partition it exactly.

use std::fmt;

use serde::Serialize;
use squad_core::config::ArticleRange;
pub use squad_core::shard::Shard;

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
        self.limit.is_none_or(|n| position < n) && self.shard.is_none_or(|s| s.contains(position))
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
}
