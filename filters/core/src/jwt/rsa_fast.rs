//! RSA public-key operation for RS256/384/512 with Montgomery multiplication on
//! 32-bit limbs: the generic big-integer code costs ~1 ms per 2048-bit
//! verification under V8; this is several times faster. PKCS#1 v1.5 only
//! (PS* stays on the `rsa` crate).

use rsa::BigUint;

#[derive(Debug, Clone)]
pub struct FastRsa {
    /// Modulus, little-endian 32-bit limbs.
    n: Vec<u32>,
    /// -n^-1 mod 2^32.
    n0inv: u32,
    /// R^2 mod n, R = 2^(32k), in limbs.
    rr: Vec<u32>,
    e: u32,
    /// Modulus length in bytes (the signature must have exactly this length).
    len: usize,
}

fn to_limbs(be: &[u8], k: usize) -> Vec<u32> {
    let mut out = vec![0u32; k];
    for (i, b) in be.iter().rev().enumerate() {
        if i / 4 < k {
            out[i / 4] |= u32::from(*b) << (8 * (i % 4));
        }
    }
    out
}

fn ge(a: &[u32], b: &[u32]) -> bool {
    for i in (0..a.len()).rev() {
        if a[i] != b[i] {
            return a[i] > b[i];
        }
    }
    true
}

fn sub_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0i64;
    for i in 0..a.len() {
        let d = i64::from(a[i]) - i64::from(b[i]) - borrow;
        a[i] = d as u32;
        borrow = i64::from(d < 0);
    }
}

impl FastRsa {
    pub fn new(n: &BigUint, e: u32) -> Option<FastRsa> {
        let be = n.to_bytes_be();
        let len = be.len();
        let k = len.div_ceil(4);
        let limbs = to_limbs(&be, k);
        if limbs.first().is_none_or(|l| l & 1 == 0) || len < 64 {
            return None;
        }
        let n0 = limbs[0];
        let mut inv: u32 = 1;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(inv)));
        }
        let rr = (BigUint::from(1u32) << (64 * k)) % n;
        Some(FastRsa {
            rr: to_limbs(&rr.to_bytes_be(), k),
            n: limbs,
            n0inv: inv.wrapping_neg(),
            e,
            len,
        })
    }

    /// Montgomery product a*b*R^-1 mod n (CIOS, the multiply and reduce
    /// passes fused into one loop with two carries). Slices are cut to their
    /// exact lengths first so the indexing needs no bounds checks: in wasm this
    /// loop is nearly all of a verification.
    fn mul(&self, a: &[u32], b: &[u32]) -> Vec<u32> {
        let k = self.n.len();
        let n = &self.n[..k];
        let b = &b[..k];
        let mut t = vec![0u32; k + 2];
        let t = &mut t[..k + 2];
        for &ai in a.iter().take(k) {
            let ai = u64::from(ai);
            let m = u64::from(
                (t[0].wrapping_add((ai as u32).wrapping_mul(b[0]))).wrapping_mul(self.n0inv),
            );
            let mut c1: u64 = 0;
            let mut c2: u64 = 0;
            for j in 0..k {
                let s1 = u64::from(t[j]) + ai * u64::from(b[j]) + c1;
                c1 = s1 >> 32;
                let s2 = (s1 & 0xffff_ffff) + m * u64::from(n[j]) + c2;
                c2 = s2 >> 32;
                if j > 0 {
                    t[j - 1] = s2 as u32;
                }
            }
            let s = u64::from(t[k]) + c1 + c2;
            t[k - 1] = s as u32;
            let s = u64::from(t[k + 1]) + (s >> 32);
            t[k] = s as u32;
            t[k + 1] = 0;
        }
        let mut r = t[..k].to_vec();
        if t[k] != 0 || ge(&r, n) {
            sub_in_place(&mut r, n);
        }
        r
    }

    /// s^e mod n as big-endian bytes of the modulus length; None when the
    /// signature has the wrong length or is not below n.
    pub fn public_op(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.len {
            return None;
        }
        let k = self.n.len();
        let s = to_limbs(sig, k);
        if ge(&s, &self.n) {
            return None;
        }
        let x = self.mul(&s, &self.rr);
        let mut acc = x.clone();
        let top = 31 - self.e.leading_zeros();
        for bit in (0..top).rev() {
            acc = self.mul(&acc, &acc);
            if (self.e >> bit) & 1 == 1 {
                acc = self.mul(&acc, &x);
            }
        }
        let mut one = vec![0u32; k];
        one[0] = 1;
        let out = self.mul(&acc, &one);
        let mut be = vec![0u8; self.len];
        for (i, b) in be.iter_mut().rev().enumerate() {
            *b = (out[i / 4] >> (8 * (i % 4))) as u8;
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

    /// The Montgomery exponentiation agrees with BigUint's modpow on random odd
    /// moduli of RSA sizes, bases near 0 and near n included.
    #[test]
    fn public_op_matches_modpow() {
        let mut rng = SplitMix64::new(7);
        for bytes in [64usize, 128, 256, 384, 512] {
            for round in 0..6 {
                let mut nb: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
                nb[0] |= 0x80;
                nb[bytes - 1] |= 1;
                let n = BigUint::from_bytes_be(&nb);
                let e = [3u32, 17, 65537][round % 3];
                let fast = FastRsa::new(&n, e).unwrap();
                for case in 0..4 {
                    let s = match case {
                        0 => BigUint::from(1u32),
                        1 => &n - BigUint::from(1u32),
                        _ => {
                            BigUint::from_bytes_be(
                                &(0..bytes)
                                    .map(|_| rng.next_u64() as u8)
                                    .collect::<Vec<u8>>(),
                            ) % &n
                        }
                    };
                    let mut sig = s.to_bytes_be();
                    while sig.len() < bytes {
                        sig.insert(0, 0);
                    }
                    let want = s.modpow(&BigUint::from(e), &n).to_bytes_be();
                    let got = fast.public_op(&sig).unwrap();
                    let got = BigUint::from_bytes_be(&got).to_bytes_be();
                    assert_eq!(got, want, "n={n:x} e={e} case={case}");
                }
            }
        }
    }
}
