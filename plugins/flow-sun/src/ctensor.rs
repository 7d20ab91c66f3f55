//! Complex tensors as (re, im) pairs of real candle tensors: batched N×N matrix algebra and
//! complex scalar arithmetic, all differentiable by candle's autograd.
//!
//! A matrix batch has shape `[.., N, N]` (row-major, the last two axes are the row and the
//! column); a scalar batch any shape. Shapes of the two parts are always equal.

use candle_core::{Result, Tensor, D};

/// A complex tensor.
#[derive(Debug, Clone)]
pub struct CT {
    pub re: Tensor,
    pub im: Tensor,
}

impl CT {
    /// From its parts (same shape).
    pub fn new(re: Tensor, im: Tensor) -> Self {
        Self { re, im }
    }

    /// e^{iφ} of real phases φ.
    pub fn cis(phi: &Tensor) -> Result<Self> {
        Ok(Self { re: phi.cos()?, im: phi.sin()? })
    }

    /// A real tensor as a complex one.
    pub fn real(re: &Tensor) -> Result<Self> {
        Ok(Self { re: re.clone(), im: re.zeros_like()? })
    }

    pub fn add(&self, o: &CT) -> Result<CT> {
        Ok(CT { re: self.re.add(&o.re)?, im: self.im.add(&o.im)? })
    }

    pub fn sub(&self, o: &CT) -> Result<CT> {
        Ok(CT { re: self.re.sub(&o.re)?, im: self.im.sub(&o.im)? })
    }

    /// Elementwise complex product (same shapes).
    pub fn mul(&self, o: &CT) -> Result<CT> {
        Ok(CT {
            re: self.re.mul(&o.re)?.sub(&self.im.mul(&o.im)?)?,
            im: self.re.mul(&o.im)?.add(&self.im.mul(&o.re)?)?,
        })
    }

    /// Elementwise quotient self / o.
    pub fn div(&self, o: &CT) -> Result<CT> {
        let den = o.re.sqr()?.add(&o.im.sqr()?)?;
        let n = self.mul(&o.conj()?)?;
        Ok(CT { re: n.re.div(&den)?, im: n.im.div(&den)? })
    }

    pub fn conj(&self) -> Result<CT> {
        Ok(CT { re: self.re.clone(), im: self.im.neg()? })
    }

    /// Multiplication by a real tensor of the same shape.
    pub fn mul_real(&self, s: &Tensor) -> Result<CT> {
        Ok(CT { re: self.re.mul(s)?, im: self.im.mul(s)? })
    }

    /// Multiplication by a real constant.
    pub fn scale(&self, s: f64) -> Result<CT> {
        Ok(CT { re: self.re.affine(s, 0.0)?, im: self.im.affine(s, 0.0)? })
    }

    /// The batched matrix product `[.., N, N] × [.., N, N]`.
    pub fn matmul(&self, o: &CT) -> Result<CT> {
        let (ar, ai, br, bi) = (self.re.contiguous()?, self.im.contiguous()?, o.re.contiguous()?, o.im.contiguous()?);
        Ok(CT { re: ar.matmul(&br)?.sub(&ai.matmul(&bi)?)?, im: ar.matmul(&bi)?.add(&ai.matmul(&br)?)? })
    }

    /// The conjugate transpose of a matrix batch.
    pub fn dagger(&self) -> Result<CT> {
        let (a, b) = (self.re.rank() - 2, self.re.rank() - 1);
        Ok(CT { re: self.re.transpose(a, b)?, im: self.im.transpose(a, b)?.neg()? })
    }

    /// Entry (i, j) of a matrix batch, as a scalar batch.
    pub fn entry(&self, i: usize, j: usize) -> Result<CT> {
        let pick = |t: &Tensor| t.narrow(D::Minus2, i, 1)?.narrow(D::Minus1, j, 1)?.squeeze(D::Minus1)?.squeeze(D::Minus1);
        Ok(CT { re: pick(&self.re)?, im: pick(&self.im)? })
    }

    /// The trace of a matrix batch, as a scalar batch.
    pub fn trace(&self, n: usize) -> Result<CT> {
        let mut t = self.entry(0, 0)?;
        for i in 1..n {
            t = t.add(&self.entry(i, i)?)?;
        }
        Ok(t)
    }

    /// c·M for a scalar batch `[..]` and a matrix batch `[.., N, N]`.
    pub fn scalar_times(&self, m: &CT) -> Result<CT> {
        let (r, i) = (self.re.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1)?, self.im.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1)?);
        Ok(CT {
            re: m.re.broadcast_mul(&r)?.sub(&m.im.broadcast_mul(&i)?)?,
            im: m.im.broadcast_mul(&r)?.add(&m.re.broadcast_mul(&i)?)?,
        })
    }

    /// c·1 (N×N) for a scalar batch `[..]`: a matrix batch `[.., N, N]`.
    pub fn times_identity(&self, n: usize) -> Result<CT> {
        let eye = Tensor::eye(n, self.re.dtype(), self.re.device())?;
        let (r, i) = (self.re.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1)?, self.im.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1)?);
        Ok(CT { re: r.broadcast_mul(&eye)?, im: i.broadcast_mul(&eye)? })
    }
}
