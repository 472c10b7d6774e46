//! `CpuSet`: a set of CPU (or NUMA node) numbers, and the one parser/printer of the
//! Linux cpulist syntax (`0-3,8`) used everywhere in kvmtune.
//!
//! Why our own type and not the `cpulist` crate: libvirt's cpusets also allow
//! exclusions (`0-7,^3`), and a hostile range like `0-4294967295` must be refused
//! before anything is allocated (the `cpulist` crate expands ranges into a `Vec`).
//! The set is a fixed-width bitmap bounded by [`MAX_CPUS`], so every operation is
//! allocation-light and a set can never name a CPU beyond what a kernel supports.

use std::fmt;
use std::str::FromStr;

/// The kernel's largest `NR_CPUS` (x86_64 `MAXSMP`). A number at or above this is no CPU.
pub const MAX_CPUS: u32 = 8192;

/// Why a cpulist string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    #[error("invalid cpulist '{list}': '{item}' is not a number or range")]
    NotANumber { list: String, item: String },
    #[error("invalid cpulist '{list}': range '{item}' goes backwards")]
    Backwards { list: String, item: String },
    #[error("invalid cpulist '{list}': {number} is beyond the largest CPU number {max}", max = MAX_CPUS - 1)]
    TooLarge { list: String, number: u64 },
}

/// A set of CPU or NUMA node numbers below [`MAX_CPUS`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CpuSet {
    // Invariant: no trailing zero word (see `trim`).
    bits: Vec<u64>,
}

impl Default for CpuSet {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuSet {
    /// The empty set.
    pub fn new() -> Self {
        CpuSet { bits: Vec::new() }
    }

    /// A set holding one number.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS`; callers use numbers read from a CpuSet or a bounded parse.
    pub fn single(cpu: u32) -> Self {
        let mut set = Self::new();
        set.insert(cpu);
        set
    }

    /// Parses the kernel/libvirt cpulist syntax: `0-3,8`, `^2` exclusions (libvirt),
    /// `0-15:2` strides (kernel). Surrounding whitespace and NUL bytes (seen in sysfs
    /// files written by old kernels) are ignored; an empty string is the empty set.
    pub fn parse(list: &str) -> Result<Self, CpuListError> {
        let trimmed = list.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        let mut set = Self::new();
        let mut excluded = Self::new();
        if trimmed.is_empty() {
            return Ok(set);
        }
        let err_nan = |item: &str| CpuListError::NotANumber {
            list: list.to_string(),
            item: item.to_string(),
        };
        for raw_item in trimmed.split(',') {
            let item = raw_item.trim();
            let (negate, body) = match item.strip_prefix('^') {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            let (range, stride) = match body.split_once(':') {
                Some((r, s)) => {
                    let stride: u64 = s.parse().map_err(|_| err_nan(item))?;
                    if stride == 0 {
                        return Err(err_nan(item));
                    }
                    (r, stride)
                }
                None => (body, 1),
            };
            let (lo, hi) = match range.split_once('-') {
                Some((a, b)) => (parse_number(a, list, item)?, parse_number(b, list, item)?),
                None => {
                    let n = parse_number(range, list, item)?;
                    (n, n)
                }
            };
            if hi < lo {
                return Err(CpuListError::Backwards {
                    list: list.to_string(),
                    item: item.to_string(),
                });
            }
            let target = if negate { &mut excluded } else { &mut set };
            let mut n = u64::from(lo);
            while n <= u64::from(hi) {
                // n <= hi < MAX_CPUS, so the cast cannot truncate.
                target.insert(n as u32);
                n += stride;
            }
        }
        if excluded.is_empty() {
            Ok(set)
        } else {
            Ok(set.difference(&excluded))
        }
    }

    /// Parses the kernel's hex bitmap format (`cpumap`, `smp_affinity`): comma-separated
    /// 32-bit words, most significant first, e.g. `00000000,0000ff00`.
    pub fn parse_mask(mask: &str) -> Result<Self, CpuListError> {
        let trimmed = mask.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        let mut set = Self::new();
        let words: Vec<&str> = trimmed.split(',').filter(|w| !w.is_empty()).collect();
        for (index_from_right, word) in words.iter().rev().enumerate() {
            let value = u32::from_str_radix(word, 16).map_err(|_| CpuListError::NotANumber {
                list: mask.to_string(),
                item: (*word).to_string(),
            })?;
            for bit in 0..32u32 {
                if value & (1 << bit) != 0 {
                    let cpu = index_from_right as u64 * 32 + u64::from(bit);
                    if cpu >= u64::from(MAX_CPUS) {
                        return Err(CpuListError::TooLarge {
                            list: mask.to_string(),
                            number: cpu,
                        });
                    }
                    set.insert(cpu as u32);
                }
            }
        }
        Ok(set)
    }

    pub fn insert(&mut self, cpu: u32) {
        assert!(cpu < MAX_CPUS, "cpu {cpu} out of range");
        let word = (cpu / 64) as usize;
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << (cpu % 64);
    }

    pub fn remove(&mut self, cpu: u32) {
        if let Some(word) = self.bits.get_mut((cpu / 64) as usize) {
            *word &= !(1 << (cpu % 64));
            self.trim();
        }
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.bits
            .get((cpu / 64) as usize)
            .is_some_and(|w| w & (1 << (cpu % 64)) != 0)
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    /// The lowest number in the set.
    pub fn first(&self) -> Option<u32> {
        self.iter().next()
    }

    /// Numbers in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter().enumerate().flat_map(|(i, word)| {
            let mut w = *word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some(i as u32 * 64 + bit)
            })
        })
    }

    pub fn union(&self, other: &CpuSet) -> CpuSet {
        self.zip_with(other, |a, b| a | b)
    }

    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        self.zip_with(other, |a, b| a & b)
    }

    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        self.zip_with(other, |a, b| a & !b)
    }

    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.bits
            .iter()
            .enumerate()
            .all(|(i, a)| a & !other.word(i) == 0)
    }

    pub fn intersects(&self, other: &CpuSet) -> bool {
        self.bits
            .iter()
            .zip(other.bits.iter())
            .any(|(a, b)| a & b != 0)
    }

    /// Word `i` of the bitmap, zero beyond its end.
    fn word(&self, i: usize) -> u64 {
        self.bits.get(i).copied().unwrap_or(0)
    }

    fn zip_with(&self, other: &CpuSet, f: impl Fn(u64, u64) -> u64) -> CpuSet {
        let len = self.bits.len().max(other.bits.len());
        let mut out = CpuSet {
            bits: (0..len).map(|i| f(self.word(i), other.word(i))).collect(),
        };
        out.trim();
        out
    }

    /// Restores the invariant: no trailing zero words.
    fn trim(&mut self) {
        while self.bits.last() == Some(&0) {
            self.bits.pop();
        }
    }
}

fn parse_number(text: &str, list: &str, item: &str) -> Result<u32, CpuListError> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CpuListError::NotANumber {
            list: list.to_string(),
            item: item.to_string(),
        });
    }
    // Up to 20 digits fit u64 parsing attempts; longer is certainly too large.
    let n: u64 = t.parse().unwrap_or(u64::MAX);
    if n >= u64::from(MAX_CPUS) {
        return Err(CpuListError::TooLarge {
            list: list.to_string(),
            number: n,
        });
    }
    Ok(n as u32)
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<T: IntoIterator<Item = u32>>(iter: T) -> Self {
        let mut set = CpuSet::new();
        for cpu in iter {
            set.insert(cpu);
        }
        set
    }
}

impl FromStr for CpuSet {
    type Err = CpuListError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CpuSet::parse(s)
    }
}

/// Prints the compact cpulist form (`0-3,8`); the empty set prints as an empty string.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.iter().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end = iter.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

impl serde::Serialize for CpuSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for CpuSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept a bare integer too (`reserved_cpus: 0` in YAML).
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = CpuSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a cpulist such as \"0-3,8\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CpuSet, E> {
                CpuSet::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<CpuSet, E> {
                CpuSet::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<CpuSet, E> {
                CpuSet::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_ranges() {
        let set = CpuSet::parse("0-3,8,10-11").unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(set.to_string(), "0-3,8,10-11");
    }

    #[test]
    fn libvirt_exclusion_and_kernel_stride() {
        assert_eq!(CpuSet::parse("0-7,^3").unwrap().to_string(), "0-2,4-7");
        assert_eq!(CpuSet::parse("0-8:4").unwrap().to_string(), "0,4,8");
    }

    #[test]
    fn sysfs_noise_is_ignored() {
        assert_eq!(CpuSet::parse("0-1\n\0").unwrap().to_string(), "0-1");
        assert!(CpuSet::parse("\0\n").unwrap().is_empty());
        assert!(CpuSet::parse("").unwrap().is_empty());
    }

    #[test]
    fn refuses_garbage_backwards_and_huge() {
        assert!(matches!(
            CpuSet::parse("0-x"),
            Err(CpuListError::NotANumber { .. })
        ));
        assert!(matches!(
            CpuSet::parse("5-2"),
            Err(CpuListError::Backwards { .. })
        ));
        assert!(matches!(
            CpuSet::parse("0-4294967295"),
            Err(CpuListError::TooLarge { .. })
        ));
        assert!(matches!(
            CpuSet::parse("99999999999999999999999"),
            Err(CpuListError::TooLarge { .. })
        ));
        let _ = CpuSet::parse("1,,2").unwrap_err();
        let _ = CpuSet::parse("0-3:0").unwrap_err();
    }

    #[test]
    fn parses_hex_masks() {
        assert_eq!(
            CpuSet::parse_mask("00000000,0000ff00\n")
                .unwrap()
                .to_string(),
            "8-15"
        );
        assert_eq!(
            CpuSet::parse_mask("1,00000001").unwrap().to_string(),
            "0,32"
        );
    }

    #[test]
    fn equal_sets_are_equal_however_they_were_built() {
        let mut a = CpuSet::parse("0,700").unwrap();
        a.remove(700);
        assert_eq!(a, CpuSet::single(0));
        let b = CpuSet::parse("0-1000")
            .unwrap()
            .intersection(&CpuSet::parse("0").unwrap());
        assert_eq!(b, CpuSet::single(0));
        assert_eq!(
            CpuSet::parse("900")
                .unwrap()
                .difference(&CpuSet::single(900)),
            CpuSet::new()
        );
        assert!(CpuSet::single(3).is_subset(&CpuSet::parse("0-900").unwrap()));
        assert!(!CpuSet::single(900).is_subset(&CpuSet::single(3)));
    }

    #[test]
    fn set_algebra() {
        let a = CpuSet::parse("0-7").unwrap();
        let b = CpuSet::parse("4-11").unwrap();
        assert_eq!(a.union(&b).to_string(), "0-11");
        assert_eq!(a.intersection(&b).to_string(), "4-7");
        assert_eq!(a.difference(&b).to_string(), "0-3");
        assert!(CpuSet::parse("5").unwrap().is_subset(&a));
        assert!(a.intersects(&b));
        assert_eq!(a.len(), 8);
        assert_eq!(b.first(), Some(4));
    }

    proptest::proptest! {
        #[test]
        fn display_parse_round_trip(cpus in proptest::collection::btree_set(0u32..MAX_CPUS, 0..64)) {
            let set: CpuSet = cpus.iter().copied().collect();
            let again = CpuSet::parse(&set.to_string()).unwrap();
            proptest::prop_assert_eq!(&again, &set);
            proptest::prop_assert_eq!(again.iter().collect::<Vec<_>>(), cpus.into_iter().collect::<Vec<_>>());
        }
    }
}
