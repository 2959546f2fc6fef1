//! Port ranges as LPM prefixes.
//!
//! The rule map is a longest-prefix-match trie whose key ends in the port, so
//! a port range becomes the few aligned power-of-two blocks that cover it
//! exactly: `9000-9100` is 6 entries, not 101.

/// Bits of a port.
pub const PORT_BITS: u8 = 16;

/// The minimal set of `(port, prefix_bits)` blocks covering `lo..=hi` exactly,
/// in ascending port order. `prefix_bits` counts the leading port bits that
/// must match (16 is one port, 0 is every port). Empty when `lo > hi`.
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut blocks = Vec::new();
    // u32 so that the block after 65535 does not overflow.
    let (mut start, end) = (u32::from(lo), u32::from(hi));
    while start <= end {
        let size_bits = largest_block(start, end);
        let bits = PORT_BITS - size_bits;
        // `start` is at most `end`, which came from a u16.
        blocks.push((start as u16, bits));
        start += 1 << size_bits;
    }
    blocks
}

/// log2 of the largest block that starts at `start`, is aligned to its own
/// size and ends at or before `end`.
fn largest_block(start: u32, end: u32) -> u8 {
    let mut size_bits = start.trailing_zeros().min(u32::from(PORT_BITS));
    while start + (1 << size_bits) - 1 > end {
        size_bits -= 1;
    }
    // At most 16, so it fits.
    size_bits as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `port` falls in the block `(base, bits)`.
    fn covers(block: (u16, u8), port: u16) -> bool {
        let (base, bits) = block;
        let mask = if bits == 0 { 0 } else { u16::MAX << (PORT_BITS - bits) };
        port & mask == base
    }

    fn check_exact_cover(lo: u16, hi: u16) {
        let blocks = port_range_prefixes(lo, hi);
        for &(base, bits) in &blocks {
            let mask = if bits == 0 { 0 } else { u16::MAX << (PORT_BITS - bits) };
            assert_eq!(base & !mask, 0, "{lo}-{hi}: block ({base},{bits}) is not aligned");
        }
        for port in 0..=u16::MAX {
            let hits = blocks.iter().filter(|block| covers(**block, port)).count();
            let expected = usize::from((lo..=hi).contains(&port));
            assert_eq!(hits, expected, "{lo}-{hi}: port {port} covered {hits} times");
        }
        assert_eq!(blocks.len(), minimal_count(lo, hi), "{lo}-{hi}: not minimal: {blocks:?}");
    }

    /// The minimal number of aligned blocks, by brute force over all choices
    /// of the block starting at each port (dynamic programming from the end).
    fn minimal_count(lo: u16, hi: u16) -> usize {
        let (lo, hi) = (usize::from(lo), usize::from(hi));
        let mut best = vec![0usize; hi + 2];
        for start in (lo..=hi).rev() {
            best[start] = (0..=16)
                .filter(|bits| start % (1 << bits) == 0 && start + (1 << bits) - 1 <= hi)
                .map(|bits| 1 + best[start + (1 << bits)])
                .min()
                .unwrap_or(usize::MAX);
        }
        best[lo]
    }

    #[test]
    fn single_port_is_one_exact_entry() {
        assert_eq!(port_range_prefixes(8443, 8443), [(8443, 16)]);
    }

    #[test]
    fn whole_space_is_one_empty_prefix() {
        assert_eq!(port_range_prefixes(0, u16::MAX), [(0, 0)]);
    }

    #[test]
    fn known_decompositions() {
        assert_eq!(
            port_range_prefixes(9000, 9100),
            [(9000, 13), (9008, 12), (9024, 10), (9088, 13), (9096, 14), (9100, 16)]
        );
        assert_eq!(port_range_prefixes(1, u16::MAX).len(), 16);
        assert_eq!(port_range_prefixes(1024, 2047), [(1024, 6)]);
    }

    #[test]
    fn reversed_range_is_empty() {
        assert!(port_range_prefixes(10, 9).is_empty());
    }

    #[test]
    fn covers_exactly_and_minimally_against_brute_force() {
        let ranges = [
            (1, 1),
            (0, 0),
            (1, 65535),
            (0, 65534),
            (80, 90),
            (1023, 1025),
            (8443, 8443),
            (9000, 9100),
            (32768, 60999),
            (65535, 65535),
            (12345, 54321),
        ];
        for (lo, hi) in ranges {
            check_exact_cover(lo, hi);
        }
        // A deterministic spread of pseudo-random ranges.
        let mut seed: u32 = 0x9e37_79b9;
        for _ in 0..40 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let a = (seed >> 16) as u16;
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let b = (seed >> 16) as u16;
            check_exact_cover(a.min(b), a.max(b));
        }
    }
}
