//! The classic pcap file format (what tcpdump, tshark and Wireshark read), written
//! little-endian with nanosecond timestamps and link type Ethernet.
//!
//! ```text
//! file header (24 bytes)                       record header (16 bytes), then the bytes
//! 0  magic      0xa1b23c4d (ns resolution)      0   seconds since 1970
//! 4  version    2.4                             4   nanoseconds within that second
//! 8  thiszone   0, sigfigs 0                    8   captured length
//! 16 snaplen                                    12  original length on the wire
//! 20 linktype   1 (LINKTYPE_ETHERNET)
//! ```
//!
//! Pure: it writes to any [`Write`] and reads no clock (the caller passes each frame's
//! time in).

use std::io::{self, Write};

/// Magic number of a nanosecond-resolution pcap file (as a little-endian u32).
pub const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// `LINKTYPE_ETHERNET`: frames start with the Ethernet header.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Bytes of the file header.
pub const FILE_HEADER_LEN: usize = 24;
/// Bytes of each record header.
pub const RECORD_HEADER_LEN: usize = 16;

/// The file header for frames of at most `snaplen` bytes.
pub fn file_header(snaplen: u32) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC_NANOS.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone and sigfigs stay 0.
    h[16..20].copy_from_slice(&snaplen.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    h
}

/// The header of one record: taken at `ts_ns` nanoseconds since 1970, `cap_len` bytes kept
/// of a frame of `orig_len`.
pub fn record_header(ts_ns: u64, cap_len: u32, orig_len: u32) -> [u8; RECORD_HEADER_LEN] {
    let secs = (ts_ns / 1_000_000_000) as u32;
    let nanos = (ts_ns % 1_000_000_000) as u32;
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&secs.to_le_bytes());
    h[4..8].copy_from_slice(&nanos.to_le_bytes());
    h[8..12].copy_from_slice(&cap_len.to_le_bytes());
    h[12..16].copy_from_slice(&orig_len.to_le_bytes());
    h
}

/// Writes a pcap stream: the file header at creation, then one record per frame.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    snaplen: u32,
    records: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header to `out`.
    ///
    /// # Errors
    ///
    /// The error of the write.
    pub fn new(mut out: W, snaplen: u32) -> io::Result<PcapWriter<W>> {
        out.write_all(&file_header(snaplen))?;
        Ok(PcapWriter {
            out,
            snaplen,
            records: 0,
        })
    }

    /// Writes one record: `frame` (cut at the snap length, so the file never breaks its
    /// own header's promise), with `orig_len` the frame's length on the wire (at least
    /// the bytes given) and `ts_ns` its time in nanoseconds since 1970.
    ///
    /// # Errors
    ///
    /// The error of the write.
    pub fn write(&mut self, ts_ns: u64, frame: &[u8], orig_len: u32) -> io::Result<()> {
        let kept = &frame[..frame.len().min(self.snaplen as usize)];
        let cap_len = kept.len() as u32;
        self.out
            .write_all(&record_header(ts_ns, cap_len, orig_len.max(cap_len)))?;
        self.out.write_all(kept)?;
        self.records += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Flushes the underlying writer.
    ///
    /// # Errors
    ///
    /// The error of the flush.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_header_is_little_endian_nanosecond_ethernet() {
        let w = PcapWriter::new(Vec::new(), 256).unwrap();
        let b = w.into_inner();
        assert_eq!(
            b,
            [
                0x4d, 0x3c, 0xb2, 0xa1, // magic, nanoseconds
                0x02, 0x00, 0x04, 0x00, // version 2.4
                0, 0, 0, 0, // thiszone
                0, 0, 0, 0, // sigfigs
                0x00, 0x01, 0x00, 0x00, // snaplen 256
                0x01, 0x00, 0x00, 0x00, // LINKTYPE_ETHERNET
            ]
        );
    }

    #[test]
    fn a_record_has_seconds_nanoseconds_lengths_then_the_kept_bytes() {
        let mut w = PcapWriter::new(Vec::new(), 4).unwrap();
        // 2024-01-01T00:00:00Z plus 123456789 ns.
        let ts = 1_704_067_200_123_456_789u64;
        w.write(ts, &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff], 60)
            .unwrap();
        w.write(5, &[1, 2], 2).unwrap();
        assert_eq!(w.records(), 2);
        let b = w.into_inner();
        assert_eq!(b.len(), 24 + 16 + 4 + 16 + 2);
        assert_eq!(
            &b[24..44],
            &[
                0x80, 0x00, 0x92, 0x65, // 1704067200 s
                0x15, 0xcd, 0x5b, 0x07, // 123456789 ns
                0x04, 0x00, 0x00, 0x00, // captured: cut at the snap length
                0x3c, 0x00, 0x00, 0x00, // original length 60
                0xaa, 0xbb, 0xcc, 0xdd,
            ]
        );
        assert_eq!(
            &b[44..],
            &[0, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1, 2]
        );
    }

    #[test]
    fn the_original_length_is_never_below_the_captured_one() {
        let mut w = PcapWriter::new(Vec::new(), 100).unwrap();
        w.write(0, &[9; 10], 3).unwrap();
        let b = w.into_inner();
        assert_eq!(&b[32..40], &[10, 0, 0, 0, 10, 0, 0, 0]);
    }
}
