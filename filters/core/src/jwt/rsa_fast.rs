//! RSA public-key operation for RS256/384/512, written for V8: the generic
//! big-integer code makes signature checks the bulk of a fresh token's cost.
//! PKCS#1 v1.5 only (PS* stays on the `rsa` crate).
//!
//! Montgomery multiplication on 27-bit limbs held in u64 (SOS: the product,
//! then the reduction): a column sums up to 1024 limb products (< 2^54 each)
//! without overflow, so carries are propagated once per column instead of
//! once per limb product. Rows are taken four at a time, so each limb loaded
//! feeds four products: under V8 a wasm load costs an address computation
//! too, and this loop is nearly all of a verification. Squarings (16 of the
//! 18 products for e = 65537) compute each cross product once, and the
//! exponentiation starts from s itself, not its Montgomery form (see `fix`).

use rsa::BigUint;

/// Limb width in bits.
const W: u32 = 27;
const MASK: u64 = (1 << W) - 1;
/// Zero limbs after the k of every operand, so that a row of four reads past
/// its end into zeros instead of needing a tail loop.
const PAD: usize = 3;
/// Most limbs: a column of a Montgomery product sums at most 2k limb products
/// below 2^54 plus a carry below 2^37, and 2·508·(2^27-1)^2 + 2^37 < 2^64.
/// That is moduli up to ~13700 bits; larger keys fall back to the `rsa` crate.
const MAX_LIMBS: usize = 508;

#[derive(Debug, Clone)]
pub struct FastRsa {
    /// Modulus, little-endian 27-bit limbs, k of them (a multiple of 4) plus
    /// PAD zeros; R = 2^(27k) > 4n, so Montgomery products of values below 2n
    /// stay below 2n and need no subtraction until the end.
    n: Vec<u64>,
    /// -n^-1 mod 2^27.
    n0inv: u64,
    /// R^(f+1) mod n, where the square-and-multiply chain for e, started from s
    /// itself rather than from its Montgomery form, yields s^e·R^-f: one
    /// Montgomery product by this gives s^e, with no conversion in or out.
    fix: Vec<u64>,
    e: u32,
    /// Modulus length in bytes (the signature must have exactly this length).
    len: usize,
}

/// Big-endian bytes to `k` little-endian limbs plus PAD zeros (bits past
/// 27k dropped).
fn to_limbs(be: &[u8], k: usize) -> Vec<u64> {
    let mut out = vec![0u64; k + PAD];
    let out_k = &mut out[..k];
    for (i, b) in be.iter().rev().enumerate() {
        let (q, r) = (8 * i / W as usize, (8 * i) as u32 % W);
        let b = u64::from(*b);
        if let Some(l) = out_k.get_mut(q) {
            *l |= (b << r) & MASK;
        }
        if r > W - 8 {
            if let Some(l) = out_k.get_mut(q + 1) {
                *l |= b >> (W - r);
            }
        }
    }
    out
}

/// a >= b, over the first k limbs.
fn ge(a: &[u64], b: &[u64], k: usize) -> bool {
    for (x, y) in a[..k].iter().zip(&b[..k]).rev() {
        if x != y {
            return x > y;
        }
    }
    true
}

fn sub_in_place(a: &mut [u64], b: &[u64], k: usize) {
    let mut borrow = 0u64;
    for (x, y) in a[..k].iter_mut().zip(&b[..k]) {
        let d = x.wrapping_sub(*y).wrapping_sub(borrow);
        *x = d & MASK;
        borrow = d >> 63;
    }
}

/// Four rows at once: t[j] += c0·x[j] + c1·x[j-1] + c2·x[j-2] + c3·x[j-3],
/// x[-1], x[-2], x[-3] being `prev`. One load of t and one of x per four
/// products; the x values move down through registers.
#[inline(always)]
fn row4(t: &mut [u64], x: &[u64], c: [u64; 4], prev: [u64; 3]) {
    let [c0, c1, c2, c3] = c;
    let [mut x1, mut x2, mut x3] = prev;
    for (tj, &x0) in t.iter_mut().zip(x) {
        *tj += c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3;
        x3 = x2;
        x2 = x1;
        x1 = x0;
    }
}

impl FastRsa {
    pub fn new(n: &BigUint, e: u32) -> Option<FastRsa> {
        let be = n.to_bytes_be();
        let len = be.len();
        // Room for every bit of a signature, R > 4n, whole groups of four rows.
        let k = (8 * len + 2).div_ceil(W as usize).next_multiple_of(4);
        let limbs = to_limbs(&be, k);
        if limbs.first().is_none_or(|l| l & 1 == 0) || len < 64 || k > MAX_LIMBS || e < 2 {
            return None;
        }
        // Newton's iteration doubles the correct low bits: 1 -> 2 -> ... -> 32.
        let n0 = limbs[0];
        let mut inv: u64 = 1;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(n0.wrapping_mul(inv)));
        }
        let mut fast = FastRsa {
            n: limbs,
            n0inv: inv.wrapping_neg() & MASK,
            fix: Vec::new(),
            e,
            len,
        };
        // Each squaring takes x·R^-f to x^2·R^-(2f+1), each product by s takes
        // it to x·s·R^-(f+1).
        let top = 31 - e.leading_zeros();
        let mut f: u64 = 0;
        for bit in (0..top).rev() {
            f = 2 * f + 1;
            if (e >> bit) & 1 == 1 {
                f += 1;
            }
        }
        // R^2 mod n is R in Montgomery form; raised to f in Montgomery form it
        // is R^f·R = R^(f+1).
        let rr = (BigUint::from(1u32) << (2 * W as usize * k)) % n;
        let rr = to_limbs(&rr.to_bytes_be(), k);
        let mut fix = fast.pow(&rr, f);
        if ge(&fix, &fast.n, k) {
            sub_in_place(&mut fix, &fast.n, k);
        }
        fast.fix = fix;
        Some(fast)
    }

    /// Number of limbs (without the padding).
    fn k(&self) -> usize {
        self.n.len() - PAD
    }

    /// x^e·R^-f mod n (below 2n), f as in `fix`, by left-to-right
    /// square-and-multiply.
    fn pow(&self, x: &[u64], e: u64) -> Vec<u64> {
        let k = self.k();
        let mut acc = x.to_vec();
        let mut out = vec![0u64; k + PAD];
        let mut t = vec![0u64; 2 * k + PAD];
        let top = 63 - e.leading_zeros();
        for bit in (0..top).rev() {
            self.sqr(&acc, &mut out, &mut t);
            std::mem::swap(&mut acc, &mut out);
            if (e >> bit) & 1 == 1 {
                self.mul(&acc, x, &mut out, &mut t);
                std::mem::swap(&mut acc, &mut out);
            }
        }
        acc
    }

    /// Montgomery product a·b·R^-1 mod n, below 2n when a, b < 2n.
    fn mul(&self, a: &[u64], b: &[u64], out: &mut [u64], t: &mut [u64]) {
        let k = self.k();
        let t = &mut t[..2 * k + PAD];
        t.fill(0);
        let b = &b[..k + PAD];
        for (i, c) in a[..k].as_chunks::<4>().0.iter().enumerate() {
            row4(&mut t[4 * i..], b, *c, [0; 3]);
        }
        self.reduce(t, out);
    }

    /// Montgomery square a·a·R^-1 mod n, below 2n when a < 2n: each cross
    /// product a[i]·a[j] is computed once and the sum doubled.
    fn sqr(&self, a: &[u64], out: &mut [u64], t: &mut [u64]) {
        let k = self.k();
        let t = &mut t[..2 * k + PAD];
        t.fill(0);
        let a = &a[..k + PAD];
        for (bi, c) in a[..k].as_chunks::<4>().0.iter().enumerate() {
            let i = 4 * bi;
            let [a0, a1, a2, a3] = *c;
            // The pairs within the four rows, then each row against a[i+4..].
            t[2 * i + 1] += a0 * a1;
            t[2 * i + 2] += a0 * a2;
            t[2 * i + 3] += a0 * a3 + a1 * a2;
            t[2 * i + 4] += a1 * a3;
            t[2 * i + 5] += a2 * a3;
            row4(&mut t[2 * i + 4..], &a[i + 4..], *c, [0; 3]);
        }
        for (tc, ai) in t[..2 * k].as_chunks_mut::<2>().0.iter_mut().zip(&a[..k]) {
            tc[0] = 2 * tc[0] + ai * ai;
            tc[1] *= 2;
        }
        self.reduce(t, out);
    }

    /// Montgomery reduction of the 2k columns in t (unnormalized sums) into
    /// out: four rows of m·n at a time, the four m found first from the low
    /// columns (the triangle below), then added to the columns above.
    fn reduce(&self, t: &mut [u64], out: &mut [u64]) {
        let k = self.k();
        let n = &self.n[..k + PAD];
        let (n0, n1, n2, n3) = (n[0], n[1], n[2], n[3]);
        let inv = self.n0inv;
        let mut c = 0u64;
        for i in (0..k).step_by(4) {
            let s = t[i] + c;
            let m0 = s.wrapping_mul(inv) & MASK;
            c = (s + m0 * n0) >> W;
            let s = t[i + 1] + c + m0 * n1;
            let m1 = s.wrapping_mul(inv) & MASK;
            c = (s + m1 * n0) >> W;
            let s = t[i + 2] + c + m0 * n2 + m1 * n1;
            let m2 = s.wrapping_mul(inv) & MASK;
            c = (s + m2 * n0) >> W;
            let s = t[i + 3] + c + m0 * n3 + m1 * n2 + m2 * n1;
            let m3 = s.wrapping_mul(inv) & MASK;
            c = (s + m3 * n0) >> W;
            row4(&mut t[i + 4..], &n[4..], [m0, m1, m2, m3], [n3, n2, n1]);
        }
        // The result is below 2n < R: k limbs take it all.
        for (o, tj) in out[..k].iter_mut().zip(&t[k..2 * k]) {
            let s = tj + c;
            *o = s & MASK;
            c = s >> W;
        }
    }

    /// s^e mod n as big-endian bytes of the modulus length; None when the
    /// signature has the wrong length or is not below n.
    pub fn public_op(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.len {
            return None;
        }
        let k = self.k();
        let s = to_limbs(sig, k);
        if ge(&s, &self.n, k) {
            return None;
        }
        let x = self.pow(&s, u64::from(self.e));
        let mut out = vec![0u64; k + PAD];
        let mut t = vec![0u64; 2 * k + PAD];
        self.mul(&x, &self.fix, &mut out, &mut t);
        if ge(&out, &self.n, k) {
            sub_in_place(&mut out, &self.n, k);
        }
        let mut be = vec![0u8; self.len];
        for (i, b) in be.iter_mut().rev().enumerate() {
            let (q, r) = (8 * i / W as usize, (8 * i) as u32 % W);
            let lo = out.get(q).map_or(0, |l| l >> r);
            let hi = out.get(q + 1).map_or(0, |l| l << (W - r));
            *b = (lo | hi) as u8;
        }
        Some(be)
    }

    /// RSASSA-PKCS1-v1_5 verification of a SHA-256/384/512 `hash`.
    pub fn verify_pkcs1v15(&self, hash: &[u8], sig: &[u8]) -> bool {
        const SHA256: &[u8] = &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ];
        const SHA384: &[u8] = &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ];
        const SHA512: &[u8] = &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ];
        let prefix = match hash.len() {
            32 => SHA256,
            48 => SHA384,
            64 => SHA512,
            _ => return false,
        };
        let Some(em) = self.public_op(sig) else {
            return false;
        };
        let t_len = prefix.len() + hash.len();
        if em.len() < t_len + 11 {
            return false;
        }
        let ps_end = em.len() - t_len - 1;
        em[0] == 0
            && em[1] == 1
            && em[2..ps_end].iter().all(|b| *b == 0xff)
            && em[ps_end] == 0
            && &em[ps_end + 1..ps_end + 1 + prefix.len()] == prefix
            && &em[ps_end + 1 + prefix.len()..] == hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::RandomSource;
    use crate::host::SplitMix64;

    fn pad(s: &BigUint, bytes: usize) -> Vec<u8> {
        let mut sig = s.to_bytes_be();
        while sig.len() < bytes {
            sig.insert(0, 0);
        }
        sig
    }

    fn check(fast: &FastRsa, n: &BigUint, e: u32, s: &BigUint) {
        let want = s.modpow(&BigUint::from(e), n);
        let got = fast.public_op(&pad(s, fast.len)).unwrap();
        assert_eq!(got.len(), fast.len);
        assert_eq!(BigUint::from_bytes_be(&got), want, "n={n:x} e={e} s={s:x}");
    }

    /// The Montgomery exponentiation agrees with BigUint's modpow on random odd
    /// moduli of every RSA size (and odd byte lengths, and a top byte of 1, so
    /// that the limb count is not a function of the length alone), for the
    /// exponents keys use and a few others, bases 0, 1, 2, n-2, n-1 and random.
    #[test]
    fn public_op_matches_modpow() {
        let mut rng = SplitMix64::new(7);
        let sizes = [
            64usize, 65, 96, 127, 128, 129, 192, 255, 256, 257, 384, 511, 512,
        ];
        for (si, bytes) in sizes.into_iter().enumerate() {
            for round in 0..4 {
                let mut nb: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
                nb[0] = if round == 3 { 1 } else { nb[0] | 0x80 };
                nb[bytes - 1] |= 1;
                let n = BigUint::from_bytes_be(&nb);
                let e = [3u32, 17, 65537, 5, 257][(si + round) % 5];
                let fast = FastRsa::new(&n, e).unwrap();
                let one = BigUint::from(1u32);
                let mut bases = vec![
                    BigUint::from(0u32),
                    one.clone(),
                    BigUint::from(2u32),
                    &n - &one - &one,
                    &n - &one,
                ];
                for _ in 0..3 {
                    let r: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
                    bases.push(BigUint::from_bytes_be(&r) % &n);
                }
                for s in &bases {
                    check(&fast, &n, e, s);
                }
            }
        }
    }

    /// Limbs all ones drive every column sum to its largest, up to the largest
    /// modulus taken: the lazy carries must not overflow (debug builds check).
    #[test]
    fn public_op_largest_limbs() {
        for bytes in [64usize, 256, 512, 1712] {
            let n = BigUint::from_bytes_be(&vec![0xff; bytes]);
            for e in [3u32, 65537] {
                let fast = FastRsa::new(&n, e).unwrap();
                assert_eq!(fast.k(), (8 * bytes + 2).div_ceil(27).next_multiple_of(4));
                let one = BigUint::from(1u32);
                check(&fast, &n, e, &(&n - &one));
                check(&fast, &n, e, &(&n >> 1));
            }
        }
    }

    #[test]
    fn rejects_what_it_cannot_compute() {
        let mut nb = vec![0xc5u8; 256];
        let n = BigUint::from_bytes_be(&nb);
        let fast = FastRsa::new(&n, 65537).unwrap();
        // A signature not below n, or of the wrong length.
        assert!(fast.public_op(&nb).is_none());
        assert!(fast.public_op(&[0xff; 256]).is_none());
        assert!(fast.public_op(&[1; 255]).is_none());
        assert!(fast.public_op(&[1; 257]).is_none());
        // Even moduli, short ones, ones past the lazy-carry bound, e < 2.
        nb[255] = 0xc4;
        assert!(FastRsa::new(&BigUint::from_bytes_be(&nb), 65537).is_none());
        assert!(FastRsa::new(&BigUint::from_bytes_be(&[0xc5; 63]), 65537).is_none());
        assert!(FastRsa::new(&BigUint::from_bytes_be(&[0xc5; 1716]), 65537).is_none());
        assert!(FastRsa::new(&n, 1).is_none());
        assert!(FastRsa::new(&n, 0).is_none());
    }
}
