//! Dense linear algebra the pipeline shares: a strided view of a matrix, `gemm` on
//! `matrixmultiply`, and row-wise normalisations. Imports nothing from the crate.

/// A matrix operand for [`gemm`]: a slice with its row and column strides, so transposes are free.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Strided<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    /// Whether every element of a `rows × cols` view lies in the slice; checked arithmetic, as a
    /// wrapped offset would pass and let `sgemm` read outside it.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.row_stride)
            .zip((cols - 1).checked_mul(self.col_stride))
            .and_then(|(r, c)| r.checked_add(c));
        last.is_some_and(|last| last < self.data.len())
            && isize::try_from(self.row_stride).is_ok()
            && isize::try_from(self.col_stride).is_ok()
    }
}

/// `c = alpha · a · b + beta · c`, `a` m×k, `b` k×n, `c` row-major m×n.
pub fn gemm(a: Strided, b: Strided, c: &mut [f32], (m, k, n): (usize, usize, usize), alpha: f32, beta: f32) {
    assert!(
        a.fits(m, k) && b.fits(k, n) && c.len() >= m * n,
        "gemm operands too small"
    );
    // SAFETY: every element the strides address lies inside its slice (asserted above).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

pub fn l2_normalise_rows(x: &mut [f32], width: usize) {
    for row in x.chunks_mut(width) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// `vector` scaled to unit length (a zero vector stays zero).
pub fn unit(vector: &[f32]) -> Vec<f32> {
    let mut unit = vector.to_vec();
    l2_normalise_rows(&mut unit, vector.len().max(1));
    unit
}

/// Softmax of each row, in place.
pub fn softmax_rows(x: &mut [f32], width: usize) {
    for row in x.chunks_mut(width) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

/// Little-endian `f32`s from `bytes` (weights in checkpoints and safetensors, vectors in SQLite).
pub fn bytes_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("chunks of 4")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_whose_last_element_overflows_do_not_fit() {
        let data = [1.0f32; 4];
        assert!(Strided::rows(&data, 2).fits(2, 2));
        assert!(!Strided::rows(&data, 2).fits(3, 2));
        let wrapping = Strided {
            data: &data,
            row_stride: usize::MAX / 2 + 1,
            col_stride: 1,
        };
        assert!(!wrapping.fits(3, 1), "(rows - 1) · stride wraps to 0 in release");
    }
}
