//! The order features are visited in: a fresh seeded permutation per epoch (derived from the
//! seed and the epoch number alone, so a resumed run rebuilds it without saved state), cut
//! into batches; optionally grouped by length like HF's `LengthGroupedSampler`.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Shuffle stream for `epoch` (ChaCha8 stream = epoch + 1; stream 0 is left unused).
fn epoch_rng(seed: u64, epoch: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64 + 1);
    rng
}

/// Batches of feature indices for one epoch; the last batch may be short.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
    group_by_length: bool,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut epoch_rng(seed, epoch));
    if group_by_length {
        // HF: megabatches of 50 batches, each sorted longest first, so each batch holds
        // features of similar length; the batch with the longest feature goes first (an
        // out-of-memory shows at once).
        for mega in order.chunks_mut(batch_size * 50) {
            mega.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    if group_by_length {
        let longest = (0..batches.len())
            .max_by_key(|&b| {
                (
                    batches[b].iter().map(|&i| lengths[i]).max(),
                    std::cmp::Reverse(b),
                )
            })
            .unwrap_or(0);
        batches.swap(0, longest);
    }
    batches
}

/// A recorded order (e.g. HF Trainer's `train_order.json`): `order` holds one permutation of
/// `0..n` per epoch, reused cyclically. Errors describe what is wrong with it.
pub fn replayed_batches(
    order: &[usize],
    n: usize,
    batch_size: usize,
    epoch: usize,
) -> Result<Vec<Vec<usize>>, String> {
    if n == 0 || order.is_empty() || !order.len().is_multiple_of(n) {
        return Err(format!(
            "has {} indices, not a whole number of epochs of {n} features",
            order.len()
        ));
    }
    let epochs = order.len() / n;
    let chunk = &order[(epoch % epochs) * n..][..n];
    let mut seen = vec![false; n];
    for &i in chunk {
        if i >= n || std::mem::replace(&mut seen[i], true) {
            return Err(format!(
                "epoch {} is not a permutation of 0..{n} (index {i})",
                epoch % epochs
            ));
        }
    }
    Ok(chunk
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_is_a_seeded_permutation() {
        let lengths = vec![10; 21];
        let a = epoch_batches(&lengths, 8, 42, 0, false);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), [8, 8, 5]);
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..21).collect::<Vec<_>>());
        assert_eq!(
            a,
            epoch_batches(&lengths, 8, 42, 0, false),
            "same seed, same order"
        );
        assert_ne!(
            a,
            epoch_batches(&lengths, 8, 42, 1, false),
            "new order per epoch"
        );
        assert_ne!(a, epoch_batches(&lengths, 8, 7, 0, false));
    }

    #[test]
    fn replays_a_recorded_order_and_rejects_bad_ones() {
        let order = [2, 0, 1, 1, 2, 0];
        assert_eq!(
            replayed_batches(&order, 3, 2, 0).unwrap(),
            vec![vec![2, 0], vec![1]]
        );
        assert_eq!(
            replayed_batches(&order, 3, 2, 1).unwrap(),
            vec![vec![1, 2], vec![0]]
        );
        assert_eq!(
            replayed_batches(&order, 3, 2, 2).unwrap(),
            vec![vec![2, 0], vec![1]]
        );
        assert!(replayed_batches(&[0, 0, 1], 3, 2, 0)
            .unwrap_err()
            .contains("permutation"));
        assert!(replayed_batches(&[0, 1], 3, 2, 0)
            .unwrap_err()
            .contains("whole number"));
    }

    #[test]
    fn grouping_puts_similar_lengths_together_longest_first() {
        let lengths: Vec<usize> = (0..64).map(|i| 10 + (i * 37) % 300).collect();
        let batches = epoch_batches(&lengths, 4, 1, 0, true);
        let max_len = |b: &Vec<usize>| b.iter().map(|&i| lengths[i]).max().unwrap();
        assert_eq!(max_len(&batches[0]), *lengths.iter().max().unwrap());
        let padding: usize = batches
            .iter()
            .map(|b| b.iter().map(|&i| max_len(b) - lengths[i]).sum::<usize>())
            .sum();
        let random = epoch_batches(&lengths, 4, 1, 0, false);
        let random_padding: usize = random
            .iter()
            .map(|b| b.iter().map(|&i| max_len(b) - lengths[i]).sum::<usize>())
            .sum();
        assert!(
            padding * 4 < random_padding,
            "{padding} vs {random_padding}"
        );
    }
}
