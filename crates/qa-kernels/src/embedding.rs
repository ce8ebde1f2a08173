//! BERT's embedding sum, `word[id] + position[t] + token_type[type]`, as one CPU op with its
//! backward beside it.
//!
//! Composed from candle ops (`composed`) it is three lookups, the multiply-and-add that keeps
//! the padding id's row out of the gradient, a broadcast add and an add; their backward runs
//! on one thread: the word table's gradient (30522 x 384 for MiniLM) is a zeroed tensor, a
//! copy of it and an index add, the position table's a reduction over the batch. That was
//! ~2% of a training step with the other core idle. Fused, forward is one pass over the
//! output rows and backward one parallel pass over the three tables' gradient rows, each
//! summing its tokens' gradients in token order, as the index add does (bit-identical).

use std::ops::Range;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, D};

use crate::cpu::{contiguous_f32, last_dim, par_filled, par_filled_parts};

/// Table rows per parallel task of the backward pass.
const TASK_ROWS: usize = 256;

/// The embedding sum composed from candle ops over the same tables (`[rows, hidden]` each),
/// `ids` and `type_ids` u32 `[batch, len]`: the fused op's reference, and what runs on a GPU.
/// The `pad_id` rows pass no gradient to the word table (HF builds it with
/// `padding_idx = pad_token_id`, so padding never updates that row).
pub fn composed(
    (word, position, token_type): (&Tensor, &Tensor, &Tensor),
    ids: &Tensor,
    type_ids: &Tensor,
    pad_id: u32,
) -> Result<Tensor> {
    let (batch, len) = ids.dims2()?;
    let hidden = word.dim(1)?;
    let lookup = |table: &Tensor, ids: &Tensor| -> Result<Tensor> {
        let rows = table.index_select(&ids.flatten_all()?, 0)?;
        rows.reshape((batch, len, hidden))
    };
    let x = lookup(word, ids)?;
    let keep = ids.ne(pad_id)?.to_dtype(x.dtype())?.unsqueeze(D::Minus1)?;
    let frozen = x.detach().broadcast_mul(&keep.affine(-1.0, 1.0)?)?;
    let x = x.broadcast_mul(&keep)?.add(&frozen)?;
    let positions = Tensor::arange(0u32, len as u32, ids.device())?;
    let positions = position.index_select(&positions, 0)?;
    let x = x.broadcast_add(&positions)?;
    x.add(&lookup(token_type, type_ids)?)
}

/// The embedding sum of one batch: the word, position and token type tables (f32
/// `[rows, hidden]`, in that order) → `[batch, len, hidden]`.
#[derive(Debug, Clone)]
pub struct EmbeddingSum {
    /// Token ids and token type ids, `[batch * len]`.
    pub ids: Arc<[u32]>,
    pub type_ids: Arc<[u32]>,
    pub batch: usize,
    /// Tokens per row; token t of a row takes position t.
    pub len: usize,
    /// The word id whose row gets no gradient (HF's `padding_idx`).
    pub pad_id: u32,
}

impl EmbeddingSum {
    /// The op for u32 `[batch, len]` ids and type ids (read to the host once).
    pub fn new(ids: &Tensor, type_ids: &Tensor, pad_id: u32) -> Result<Self> {
        let (batch, len) = ids.dims2()?;
        if type_ids.dims() != ids.dims() {
            candle_core::bail!(
                "embeddings: token types {:?} for token ids {:?}",
                type_ids.dims(),
                ids.dims()
            );
        }
        let host = |t: &Tensor| -> Result<Arc<[u32]>> { Ok(t.flatten_all()?.to_vec1()?.into()) };
        Ok(EmbeddingSum {
            ids: host(ids)?,
            type_ids: host(type_ids)?,
            batch,
            len,
            pad_id,
        })
    }

    /// The sum for the tables (differentiable in all three).
    pub fn forward(
        &self,
        (word, position, token_type): (&Tensor, &Tensor, &Tensor),
    ) -> Result<Tensor> {
        word.apply_op3(position, token_type, self.clone())
    }

    /// The tables' width and rows, once each is checked to be `[rows, hidden]` with one
    /// `hidden` > 0, every id inside its table (as `index_select` checks) and the positions
    /// inside theirs.
    fn check(&self, tables: [&Layout; 3]) -> Result<(usize, [usize; 3])> {
        let dims = tables.map(|l| l.shape().dims().to_vec());
        let hidden = dims[0].get(1).copied().unwrap_or(0);
        if hidden == 0 || dims.iter().any(|d| d.len() != 2 || d[1] != hidden) {
            candle_core::bail!("embeddings: tables {dims:?} are not [rows, hidden] of one hidden");
        }
        let [words, positions, types] = dims.map(|d| d[0]);
        let outside = |ids: &[u32], rows: usize| ids.iter().find(|&&i| i as usize >= rows).copied();
        if let Some(id) = outside(&self.ids, words) {
            candle_core::bail!("embeddings: token id {id} outside the {words}-row word table");
        }
        if let Some(id) = outside(&self.type_ids, types) {
            candle_core::bail!("embeddings: token type {id} outside the {types}-row table");
        }
        if self.len > positions {
            candle_core::bail!("embeddings: {} tokens, {positions} positions", self.len);
        }
        Ok((hidden, [words, positions, types]))
    }
}

impl CustomOp3 for EmbeddingSum {
    fn name(&self) -> &'static str {
        "embedding-sum"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let word = contiguous_f32(s1, l1, self.name())?;
        let position = contiguous_f32(s2, l2, self.name())?;
        let token_type = contiguous_f32(s3, l3, self.name())?;
        let (hidden, _) = self.check([l1, l2, l3])?;
        let y = par_filled(self.ids.len() * hidden, hidden, |r, out| {
            let token = r.start / hidden;
            let w = &word[self.ids[token] as usize * hidden..][..hidden];
            let p = &position[token % self.len * hidden..][..hidden];
            let t = &token_type[self.type_ids[token] as usize * hidden..][..hidden];
            for j in 0..hidden {
                out[j] = (w[j] + p[j]) + t[j];
            }
        });
        let shape = Shape::from((self.batch, self.len, hidden));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        word: &Tensor,
        position: &Tensor,
        token_type: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_op = EmbeddingSumGrad {
            op: self,
            rows: [word.dim(0)?, position.dim(0)?, token_type.dim(0)?],
        };
        let packed = grad.contiguous()?.apply_op1_no_bwd(&grad_op)?;
        let [w, p, t] = grad_op.rows;
        Ok((
            Some(packed.narrow(0, 0, w)?),
            Some(packed.narrow(0, w, p)?),
            Some(packed.narrow(0, w + p, t)?),
        ))
    }
}

/// The embedding sum's backward: the gradient of its output → the word, position and token
/// type tables' gradients, stacked (`[rows of all three, hidden]`).
struct EmbeddingSumGrad<'a> {
    op: &'a EmbeddingSum,
    rows: [usize; 3],
}

impl EmbeddingSumGrad<'_> {
    /// Table rows `rows` of the gradient (`out`, zeroed), from the tokens that `table_row`
    /// maps into them (None: no gradient), added in token order.
    fn add_rows(
        &self,
        grad: &[f32],
        rows: Range<usize>,
        table_row: impl Fn(usize) -> Option<usize>,
        out: &mut [f32],
    ) {
        let hidden = out.len() / rows.len();
        for token in 0..self.op.ids.len() {
            let Some(r) = table_row(token).filter(|r| rows.contains(r)) else {
                continue;
            };
            let dst = &mut out[(r - rows.start) * hidden..][..hidden];
            let src = &grad[token * hidden..][..hidden];
            dst.iter_mut().zip(src).for_each(|(d, &g)| *d += g);
        }
    }

    /// Rows `rows` (of all three tables, stacked) into `out`.
    fn table_rows(&self, grad: &[f32], rows: Range<usize>, out: &mut [f32]) {
        let op = self.op;
        let [words, positions, _] = self.rows;
        if rows.start < words {
            let word = |token: usize| Some(op.ids[token]).filter(|&id| id != op.pad_id);
            self.add_rows(grad, rows, |t| word(t).map(|id| id as usize), out);
        } else if rows.start < words + positions {
            let position = |token: usize| Some(words + token % op.len);
            self.add_rows(grad, rows, position, out);
        } else {
            let token_type = |token: usize| Some(words + positions + op.type_ids[token] as usize);
            self.add_rows(grad, rows, token_type, out);
        }
    }
}

impl CustomOp1 for EmbeddingSumGrad<'_> {
    fn name(&self) -> &'static str {
        "embedding-sum-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let grad = contiguous_f32(s, l, self.name())?;
        let hidden = last_dim(l);
        let total: usize = self.rows.iter().sum();
        // Tasks never straddle two tables: each table's rows split on their own.
        let mut tasks = Vec::new();
        let mut start = 0;
        for rows in self.rows {
            tasks.extend(
                (start..start + rows)
                    .step_by(TASK_ROWS)
                    .map(|r| r..(r + TASK_ROWS).min(start + rows)),
            );
            start += rows;
        }
        let parts: Vec<_> = tasks
            .iter()
            .map(|r| r.start * hidden..r.end * hidden)
            .collect();
        let out = par_filled_parts(&parts, |i, values| {
            self.table_rows(grad, tasks[i].clone(), values)
        });
        Ok((CpuStorage::F32(out), Shape::from((total, hidden))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{probe_grads, values};
    use candle_core::{Device, Var};

    /// The fused op's output and its three tables' gradients equal the composed path's bit
    /// for bit, with padding ids (their word row gets no gradient), both token types and
    /// fewer tokens than positions.
    #[test]
    fn embedding_sum_matches_the_composed_version_bit_for_bit() {
        let dev = Device::Cpu;
        let (batch, len, hidden, pad) = (3, 7, 5, 0u32);
        let table = |rows: usize, seed: f32| {
            Var::from_vec(values(rows * hidden, seed), (rows, hidden), &dev).unwrap()
        };
        let (word, position, token_type) = (table(600, 0.1), table(9, 0.5), table(2, 0.9));
        let ids: Vec<u32> = (0..batch * len)
            .map(|i| {
                if i % len >= 5 {
                    pad
                } else {
                    (i * 37 % 600) as u32
                }
            })
            .collect();
        let types: Vec<u32> = (0..batch * len).map(|i| u32::from(i % len >= 3)).collect();
        let ids = Tensor::from_vec(ids, (batch, len), &dev).unwrap();
        let types = Tensor::from_vec(types, (batch, len), &dev).unwrap();
        let tables = (
            word.as_tensor(),
            position.as_tensor(),
            token_type.as_tensor(),
        );
        let fused = EmbeddingSum::new(&ids, &types, pad)
            .unwrap()
            .forward(tables)
            .unwrap();
        let reference = composed(tables, &ids, &types, pad).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        assert_eq!(fused.dims(), reference.dims());
        assert_eq!(bits(&fused), bits(&reference), "forward");
        let probe = Tensor::from_vec(
            values(batch * len * hidden, 2.3),
            (batch, len, hidden),
            &dev,
        );
        let probe = probe.unwrap();
        let (a, r) = (probe_grads(&fused, &probe), probe_grads(&reference, &probe));
        for (name, var) in [
            ("word", &word),
            ("position", &position),
            ("type", &token_type),
        ] {
            let (ga, gr) = (
                a.get(var.as_tensor()).unwrap(),
                r.get(var.as_tensor()).unwrap(),
            );
            assert_eq!(ga.dims(), gr.dims(), "{name}");
            assert_eq!(bits(ga), bits(gr), "gradient of the {name} table");
        }
        let pad_row = a.get(word.as_tensor()).unwrap().get(pad as usize).unwrap();
        assert!(
            bits(&pad_row).iter().all(|&b| b == 0),
            "the padding row got a gradient"
        );
    }

    /// A finite-difference check of all three tables' gradients (no padding ids: the padding
    /// row's gradient is blocked on purpose, so differences would disagree there).
    #[test]
    fn embedding_sum_gradient_matches_finite_differences() {
        use crate::testing::{assert_finite_differences, flat};
        let dev = Device::Cpu;
        let (batch, len, hidden, rows) = (2, 3, 2, [5, 4, 2]);
        let ids = Tensor::from_vec(vec![1u32, 4, 1, 2, 3, 4], (batch, len), &dev).unwrap();
        let types = Tensor::from_vec(vec![0u32, 1, 1, 0, 0, 1], (batch, len), &dev).unwrap();
        let op = EmbeddingSum::new(&ids, &types, 0).unwrap();
        let probe = Tensor::from_vec(
            values(batch * len * hidden, 1.1),
            (batch, len, hidden),
            &dev,
        );
        let probe = probe.unwrap();
        let sizes = rows.map(|r| r * hidden);
        let tables = |v: &[f32]| -> [Tensor; 3] {
            let (w, rest) = v.split_at(sizes[0]);
            let (p, t) = rest.split_at(sizes[1]);
            [(w, rows[0]), (p, rows[1]), (t, rows[2])]
                .map(|(x, r)| Tensor::from_vec(x.to_vec(), (r, hidden), &dev).unwrap())
        };
        let loss = |v: &[f32]| -> f32 {
            let [w, p, t] = tables(v);
            let y = op.forward((&w, &p, &t)).unwrap();
            (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let x = values(sizes.iter().sum(), 0.6);
        let vars = tables(&x).map(|t| Var::from_tensor(&t).unwrap());
        let y = op.forward((
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
        ));
        let grads = probe_grads(&y.unwrap(), &probe);
        let analytic: Vec<f32> = vars
            .iter()
            .flat_map(|v| flat(grads.get(v.as_tensor()).unwrap()))
            .collect();
        assert_finite_differences(loss, &x, &analytic, 1e-2, 1e-2);
    }

    /// An id outside its table, tables of different widths or token types not shaped as the
    /// ids are errors naming them, not reads out of bounds.
    #[test]
    fn an_id_outside_the_table_is_an_error() {
        let dev = Device::Cpu;
        let table = |rows: usize| Tensor::zeros((rows, 4), candle_core::DType::F32, &dev).unwrap();
        let ids = Tensor::from_vec(vec![1u32, 12], (1, 2), &dev).unwrap();
        let types = Tensor::from_vec(vec![0u32, 0], (1, 2), &dev).unwrap();
        let op = EmbeddingSum::new(&ids, &types, 0).unwrap();
        let err = op.forward((&table(10), &table(4), &table(2))).unwrap_err();
        assert!(err.to_string().contains("token id 12"), "{err}");
        let err = op.forward((&table(20), &table(1), &table(2))).unwrap_err();
        assert!(err.to_string().contains("2 tokens, 1 positions"), "{err}");
        let narrow = Tensor::zeros((4, 3), candle_core::DType::F32, &dev).unwrap();
        let err = op.forward((&table(20), &narrow, &table(2))).unwrap_err();
        assert!(err.to_string().contains("one hidden"), "{err}");
        let short = Tensor::from_vec(vec![0u32], (1, 1), &dev).unwrap();
        let err = EmbeddingSum::new(&ids, &short, 0).unwrap_err();
        assert!(err.to_string().contains("token types"), "{err}");
    }
}
