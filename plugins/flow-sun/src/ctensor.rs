//! Complex tensors for candle's autograd: scalar batches as (re, im) pairs of real tensors
//! ([`CT`]), and batches of N×N matrices as one `[.., N, N, 2]` tensor of row-major entries with
//! (re, im) last ([`CM`]: the flat layout of the theory's links, so configurations need no
//! conversion), multiplied by the op of [`crate::cmatmul`].

use candle_core::{Result, Tensor, D};

use crate::cmatmul::cmatmul;

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
}

/// A batch of N×N complex matrices, `[.., N, N, 2]`.
#[derive(Debug, Clone)]
pub struct CM {
    pub t: Tensor,
    pub n: usize,
}

impl CM {
    /// Wraps a `[.., N, N, 2]` tensor.
    pub fn new(t: Tensor, n: usize) -> Self {
        Self { t, n }
    }

    /// op_a(self) · op_b(o), op the identity or the conjugate transpose (equal shapes).
    pub fn matmul_adj(&self, o: &CM, adj_a: bool, adj_b: bool) -> Result<CM> {
        Ok(CM { t: cmatmul(&self.t, &o.t, self.n, adj_a, adj_b)?, n: self.n })
    }

    /// self · o.
    pub fn matmul(&self, o: &CM) -> Result<CM> {
        self.matmul_adj(o, false, false)
    }

    /// The real and imaginary parts `[.., N, N]` (views).
    pub fn parts(&self) -> Result<(Tensor, Tensor)> {
        let last = self.t.rank() - 1;
        Ok((self.t.narrow(last, 0, 1)?.squeeze(last)?, self.t.narrow(last, 1, 1)?.squeeze(last)?))
    }

    /// Entry (i, j) as a scalar batch.
    pub fn entry(&self, i: usize, j: usize) -> Result<CT> {
        let r = self.t.rank();
        let e = self.t.narrow(r - 3, i, 1)?.narrow(r - 2, j, 1)?.squeeze(r - 2)?.squeeze(r - 3)?;
        let last = e.rank() - 1;
        Ok(CT { re: e.narrow(last, 0, 1)?.squeeze(last)?, im: e.narrow(last, 1, 1)?.squeeze(last)? })
    }

    /// The trace as a scalar batch.
    pub fn trace(&self) -> Result<CT> {
        let mut t = self.entry(0, 0)?;
        for i in 1..self.n {
            t = t.add(&self.entry(i, i)?)?;
        }
        Ok(t)
    }

    /// Σ_k c_k M^k for scalar batches c = (c_0, c_1, …) `[..]` and the powers `pows` = (M, M², …)
    /// (c_0 multiplies the identity).
    pub fn polynomial(c: &[CT], pows: &[&CM]) -> Result<CM> {
        let n = pows[0].n;
        let expand = |x: &Tensor| -> Result<Tensor> { x.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1) };
        let eye = Tensor::eye(n, c[0].re.dtype(), c[0].re.device())?;
        let mut re = expand(&c[0].re)?.broadcast_mul(&eye)?;
        let mut im = expand(&c[0].im)?.broadcast_mul(&eye)?;
        for (ck, m) in c[1..].iter().zip(pows) {
            let (mr, mi) = m.parts()?;
            let (cr, ci) = (expand(&ck.re)?, expand(&ck.im)?);
            re = re.add(&mr.broadcast_mul(&cr)?.sub(&mi.broadcast_mul(&ci)?)?)?;
            im = im.add(&mi.broadcast_mul(&cr)?.add(&mr.broadcast_mul(&ci)?)?)?;
        }
        Ok(CM { t: Tensor::stack(&[&re, &im], re.rank())?, n })
    }
}
