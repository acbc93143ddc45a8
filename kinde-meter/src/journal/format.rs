//! The on-disk format: a segment is a header and a sequence of checksummed entries.
//!
//! ```text
//! segment: magic "KMJRNL\0\0" | version u32 | crc32(magic, version) u32 | entry*
//! entry:   len u32 | !len u32 | crc32(payload) u32 | payload (len bytes)
//! payload: 1 Put    id | meter u8 | value u64 | timestamp u64 | attempts u32 |
//!                   maybe_applied u8 | agreement str | feature str | key str | last_error opt-str
//!                   [1 bound str]   (usage recorded for a customer, once resolved)
//!          2 Start  id        (an attempt of the record is about to leave)
//!          3 Settle id        (delivered, rejected, superseded or handed back: done)
//! id:      run u64 | seq u64;  str: len u32 | UTF-8;  opt-str: 0 | 1 str;  all little-endian
//! ```
//!
//! The length is stored twice (the second time inverted) so a damaged length is seen as
//! damage, not mistaken for a write the process died in (a torn tail).

use crate::api::{AgreementId, FeatureCode, MeterType, Timestamp};
use crate::usage::{Attempts, RecordId, UsageRecord};

const MAGIC: &[u8; 8] = b"KMJRNL\0\0";
/// The format this build writes and reads.
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 16;
const ENTRY_HEADER_LEN: usize = 12;
/// No entry is longer: agreement ids, feature codes and keys are at most 255 bytes,
/// and error texts are cut to fit.
const MAX_PAYLOAD: usize = 4 * 1024;
const MAX_ERROR_LEN: usize = 2 * 1024;
/// A `Start` or `Settle` payload: the tag and an id.
const ID_PAYLOAD: usize = 17;
/// The shortest `Put` payload (empty strings, no error).
const MIN_PUT_PAYLOAD: usize = 52;

const PUT: u8 = 1;
const START: u8 = 2;
const SETTLE: u8 = 3;

/// A journaled record: its identity, what is billed, and its delivery history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) id: RecordId,
    pub(crate) usage: UsageRecord,
    pub(crate) attempts: Attempts,
}

/// One entry of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The record's state from here on (new, merged, or after a failed attempt).
    Put(Stored),
    /// An attempt of it is about to be sent.
    Start(RecordId),
    /// It is done with.
    Settle(RecordId),
}

impl Entry {
    pub(crate) fn id(&self) -> RecordId {
        match self {
            Entry::Put(s) => s.id,
            Entry::Start(id) | Entry::Settle(id) => *id,
        }
    }
}

pub(crate) fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a segment's header says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header {
    Ok,
    /// Shorter than a header: the process died creating it.
    Partial,
    /// Written by a newer kinde-meter.
    Newer(u32),
    /// Not a journal segment, or damaged.
    Damaged,
}

pub(crate) fn read_header(bytes: &[u8]) -> Header {
    // Zeros are space a file system allocated for a write that never landed.
    if bytes.iter().all(|&b| b == 0) {
        return Header::Partial;
    }
    if bytes.len() < HEADER_LEN {
        // A prefix of a valid header is a creation cut short.
        return if header().starts_with(bytes) {
            Header::Partial
        } else {
            Header::Damaged
        };
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default());
    if &bytes[..8] != MAGIC || crc32fast::hash(&bytes[..12]) != crc {
        return Header::Damaged;
    }
    match u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default()) {
        VERSION => Header::Ok,
        v if v > VERSION => Header::Newer(v),
        _ => Header::Damaged,
    }
}

/// Appends `entry`, framed, to `out`.
pub(crate) fn encode(entry: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; ENTRY_HEADER_LEN]);
    match entry {
        Entry::Put(s) => {
            out.push(PUT);
            id(out, s.id);
            out.push(match s.usage.meter_type {
                MeterType::Delta => 0,
                MeterType::Absolute => 1,
            });
            out.extend_from_slice(&s.usage.value.to_le_bytes());
            out.extend_from_slice(&s.usage.timestamp.unix_seconds().to_le_bytes());
            out.extend_from_slice(&s.attempts.count.to_le_bytes());
            out.push(u8::from(s.attempts.maybe_applied));
            string(out, s.usage.agreement.as_str());
            string(out, s.usage.feature.as_str());
            string(out, &s.usage.idempotency_key);
            match &s.attempts.last_error {
                None => out.push(0),
                Some(e) => {
                    out.push(1);
                    string(out, truncate(e, MAX_ERROR_LEN));
                }
            }
            // Only when there is one, so records of agreements read as they always did.
            if let Some(bound) = &s.attempts.bound {
                out.push(1);
                string(out, bound.as_str());
            }
        }
        Entry::Start(i) => {
            out.push(START);
            id(out, *i);
        }
        Entry::Settle(i) => {
            out.push(SETTLE);
            id(out, *i);
        }
    }
    let payload = &out[start + ENTRY_HEADER_LEN..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&(!len).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

fn id(out: &mut Vec<u8>, id: RecordId) {
    out.extend_from_slice(&id.run.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// How reading a segment's entries ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// At the end of the file.
    Clean,
    /// In a partial last entry that starts at `at` (a write the process died in).
    Torn { at: usize },
}

/// What a segment holds, in order: entries, and damaged stretches between them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    Entry(Entry),
    /// `len` bytes at `at` that are no valid entry.
    Damaged {
        at: usize,
        len: usize,
    },
}

/// Reads the entries after the header of `bytes`. Past a damaged stretch, reading goes
/// on at the next offset where a whole, valid entry starts, so damage costs only what
/// it covers.
pub(crate) fn decode_all(bytes: &[u8]) -> (Vec<Piece>, End) {
    let mut resync_budget = bytes.len().saturating_mul(4).saturating_add(1 << 20);
    let mut pieces = Vec::new();
    let mut at = HEADER_LEN.min(bytes.len());
    while at < bytes.len() {
        match entry_at(bytes, at) {
            Ok((entry, end)) => {
                pieces.push(Piece::Entry(entry));
                at = end;
            }
            // The file ends inside an entry whose framing is sound: a write cut short
            // (all a kill can leave). Zeros to the end: space allocated for a write
            // that never landed (a power cut). Anything else is damage, even in the
            // last entry: a whole entry that fails its checksum was written and changed.
            Err(Bad::Partial) => return (pieces, End::Torn { at }),
            Err(_) if bytes[at..].iter().all(|&b| b == 0) => {
                return (pieces, End::Torn { at });
            }
            Err(_) => {
                // Checksums tried while looking for the next entry are bounded, so a
                // file made to look like entries everywhere costs a few passes, not one
                // per byte; past the budget, the rest is damage.
                let next = (at + 1..bytes.len())
                    .find(|&o| {
                        let Some(len) = plausible_at(bytes, o) else {
                            return false;
                        };
                        if len > resync_budget {
                            resync_budget = 0;
                            return false;
                        }
                        resync_budget -= len;
                        entry_at(bytes, o).is_ok()
                    })
                    .unwrap_or(bytes.len());
                pieces.push(Piece::Damaged { at, len: next - at });
                at = next;
            }
        }
    }
    (pieces, End::Clean)
}

/// Why no valid entry starts at an offset.
enum Bad {
    /// Its framing is sound but runs past the end of the file.
    Partial,
    /// Its framing is not sound (the two copies of the length disagree).
    Framing,
    /// Its framing is sound but its checksum or content is not.
    Content,
}

/// The payload length of a whole entry that may start at `at`, judged by its framing and
/// tag alone (no checksum).
fn plausible_at(bytes: &[u8], at: usize) -> Option<usize> {
    let rest = bytes.get(at..)?;
    let word = |i: usize| {
        rest.get(i..i + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let (len, check) = (word(0)? as usize, word(4)?);
    let fits = match rest.get(ENTRY_HEADER_LEN)? {
        &PUT => (MIN_PUT_PAYLOAD..=MAX_PAYLOAD).contains(&len),
        &START | &SETTLE => len == ID_PAYLOAD,
        _ => false,
    };
    (check == !(len as u32) && fits && rest.len() >= ENTRY_HEADER_LEN + len).then_some(len)
}

fn entry_at(bytes: &[u8], at: usize) -> Result<(Entry, usize), Bad> {
    let rest = &bytes[at..];
    if rest.len() < ENTRY_HEADER_LEN {
        return Err(Bad::Partial);
    }
    let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let (len, check, crc) = (word(0), word(4), word(8));
    if check != !len || len as usize > MAX_PAYLOAD {
        return Err(Bad::Framing);
    }
    let end = ENTRY_HEADER_LEN + len as usize;
    if rest.len() < end {
        return Err(Bad::Partial);
    }
    let payload = &rest[ENTRY_HEADER_LEN..end];
    #[cfg(test)]
    tests::HASHED.with(|h| h.set(h.get() + payload.len()));
    let entry = (crc32fast::hash(payload) == crc)
        .then(|| decode(payload))
        .flatten();
    entry.map(|e| (e, at + end)).ok_or(Bad::Content)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn id(&mut self) -> Option<RecordId> {
        Some(RecordId {
            run: self.u64()?,
            seq: self.u64()?,
        })
    }

    fn str(&mut self) -> Option<&str> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }
}

fn decode(payload: &[u8]) -> Option<Entry> {
    let mut r = Reader(payload);
    let entry = match r.u8()? {
        PUT => {
            let id = r.id()?;
            let meter_type = match r.u8()? {
                0 => MeterType::Delta,
                1 => MeterType::Absolute,
                _ => return None,
            };
            let value = r.u64()?;
            let timestamp = Timestamp::from_unix_seconds(r.u64()?).ok()?;
            let count = r.u32()?;
            let maybe_applied = match r.u8()? {
                0 => false,
                1 => true,
                _ => return None,
            };
            let agreement = AgreementId::from_stored(r.str()?)?;
            let feature = FeatureCode::new(r.str()?).ok()?;
            let key = r
                .str()
                .filter(|k| crate::usage::is_idempotency_key(k))?
                .to_owned();
            let last_error = match r.u8()? {
                0 => None,
                1 => Some(r.str()?.to_owned()),
                _ => return None,
            };
            let bound = if r.0.is_empty() {
                None
            } else if r.u8()? == 1 {
                Some(AgreementId::new(r.str()?).ok()?)
            } else {
                return None;
            };
            let customer = agreement.customer();
            Entry::Put(Stored {
                id,
                usage: UsageRecord {
                    agreement,
                    customer,
                    feature,
                    meter_type,
                    value,
                    timestamp,
                    idempotency_key: key,
                },
                attempts: Attempts {
                    count,
                    maybe_applied,
                    last_error,
                    bound,
                },
            })
        }
        START => Entry::Start(r.id()?),
        SETTLE => Entry::Settle(r.id()?),
        _ => return None,
    };
    // Trailing bytes mean the framing and the content disagree.
    r.0.is_empty().then_some(entry)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// Payload bytes checksummed on this thread, to count decoding's work.
        pub(super) static HASHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    pub(crate) fn stored(seq: u64, value: u64) -> Stored {
        Stored {
            id: RecordId { run: 7, seq },
            usage: UsageRecord {
                agreement: AgreementId::new(format!("agreement_{seq}")).expect("id"),
                customer: None,
                feature: FeatureCode::from_static("api_calls"),
                meter_type: MeterType::Delta,
                value,
                timestamp: Timestamp::from_unix_seconds(1_700_000_000 + seq).expect("ts"),
                idempotency_key: format!("{seq:032x}"),
            },
            attempts: Attempts {
                count: 1,
                maybe_applied: seq.is_multiple_of(2),
                last_error: Some("timed out ✓".to_owned()),
                bound: None,
            },
        }
    }

    fn entries(pieces: Vec<Piece>) -> Vec<Entry> {
        pieces
            .into_iter()
            .filter_map(|p| match p {
                Piece::Entry(e) => Some(e),
                Piece::Damaged { .. } => None,
            })
            .collect()
    }

    #[test]
    fn entries_round_trip() {
        let written = vec![
            Entry::Put(stored(1, 5)),
            Entry::Start(RecordId { run: 7, seq: 1 }),
            Entry::Put(Stored {
                attempts: Attempts::default(),
                ..stored(2, u64::MAX)
            }),
            Entry::Settle(RecordId { run: 7, seq: 1 }),
        ];
        let mut bytes = header().to_vec();
        for e in &written {
            encode(e, &mut bytes);
        }
        assert_eq!(read_header(&bytes), Header::Ok);
        let (pieces, end) = decode_all(&bytes);
        assert_eq!((entries(pieces), end), (written, End::Clean));
    }

    /// A customer's record, before and after it was bound to an agreement: the stand-in
    /// and the agreement both come back, and a record of an agreement is written as the
    /// format always wrote it (no trailing field).
    #[test]
    fn customer_records_round_trip_with_the_agreement_they_are_bound_to() {
        let customer = crate::api::Customer::org("org_acme").expect("code");
        let mut unbound = stored(3, 9);
        unbound.usage.agreement = AgreementId::for_customer(&customer);
        unbound.usage.customer = Some(customer);
        let mut bound = unbound.clone();
        bound.id.seq = 4;
        bound.attempts.bound = Some(AgreementId::new("agreement_acme").expect("id"));
        let written = vec![Entry::Put(unbound), Entry::Put(bound)];
        let mut bytes = header().to_vec();
        for e in &written {
            encode(e, &mut bytes);
        }
        let (pieces, end) = decode_all(&bytes);
        assert_eq!((entries(pieces), end), (written, End::Clean));

        let (mut plain, mut plain_bound) = (Vec::new(), Vec::new());
        encode(&Entry::Put(stored(5, 1)), &mut plain);
        let mut with = stored(5, 1);
        with.attempts.bound = Some(AgreementId::new("agreement_x").expect("id"));
        encode(&Entry::Put(with), &mut plain_bound);
        assert_eq!(plain_bound.len(), plain.len() + 1 + 4 + "agreement_x".len());
    }

    #[test]
    fn a_cut_is_a_torn_tail_and_damage_costs_only_the_entry_it_hits() {
        let mut bytes = header().to_vec();
        encode(&Entry::Put(stored(1, 5)), &mut bytes);
        let second = bytes.len();
        encode(&Entry::Put(stored(2, 6)), &mut bytes);
        let third = bytes.len();
        encode(&Entry::Settle(RecordId { run: 7, seq: 1 }), &mut bytes);
        for cut in third + 1..bytes.len() {
            let (pieces, end) = decode_all(&bytes[..cut]);
            assert_eq!(pieces.len(), 2, "cut at {cut}");
            assert_eq!(end, End::Torn { at: third }, "cut at {cut}");
        }
        for offset in second..third {
            let mut flipped = bytes.clone();
            flipped[offset] ^= 0x10;
            let (pieces, end) = decode_all(&flipped);
            assert_eq!(end, End::Clean, "offset {offset}");
            assert_eq!(
                pieces,
                vec![
                    Piece::Entry(Entry::Put(stored(1, 5))),
                    Piece::Damaged {
                        at: second,
                        len: third - second
                    },
                    Piece::Entry(Entry::Settle(RecordId { run: 7, seq: 1 })),
                ],
                "offset {offset}"
            );
        }
    }

    #[test]
    fn zeros_at_the_end_are_a_torn_tail_and_a_whole_bad_last_entry_is_damage() {
        let mut bytes = header().to_vec();
        encode(&Entry::Put(stored(1, 5)), &mut bytes);
        let end = bytes.len();
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 40]);
        let (pieces, tail) = decode_all(&zeros);
        assert_eq!((pieces.len(), tail), (1, End::Torn { at: end }));
        assert_eq!(
            read_header(&[0; 64]),
            Header::Partial,
            "a file never written"
        );
        let mut flipped = bytes.clone();
        flipped[end - 3] ^= 0x01;
        let (pieces, tail) = decode_all(&flipped);
        assert_eq!(tail, End::Clean);
        assert!(
            matches!(pieces[..], [Piece::Damaged { at: HEADER_LEN, .. }]),
            "{pieces:?}"
        );
    }

    #[test]
    fn a_file_made_to_look_like_entries_everywhere_is_read_in_bounded_work() {
        // Every 8th offset has sound framing, a `Put` tag and a 4 KiB length: looking for
        // the next entry after damage would hash 4 KiB per offset without the budget.
        let len: u32 = 0x0FFE;
        let mut word = len.to_le_bytes().to_vec();
        word.extend_from_slice(&(!len).to_le_bytes());
        let mut bytes = header().to_vec();
        for _ in 0..(1 << 20) / word.len() {
            bytes.extend_from_slice(&word);
        }
        let unbounded: usize = (1..bytes.len())
            .filter_map(|o| plausible_at(&bytes, o))
            .sum();
        assert!(
            unbounded > 100 * bytes.len(),
            "as hostile as meant: {unbounded}"
        );
        HASHED.with(|h| h.set(0));
        let (pieces, _) = decode_all(&bytes);
        assert!(pieces.iter().all(|p| matches!(p, Piece::Damaged { .. })));
        let hashed = HASHED.with(|h| h.get());
        assert!(
            hashed <= 5 * bytes.len() + (1 << 20),
            "{hashed} bytes hashed for a {} byte file",
            bytes.len()
        );
    }

    #[test]
    fn a_put_with_an_idempotency_key_the_client_would_refuse_is_damage() {
        let mut s = stored(4, 1);
        s.usage.idempotency_key = "k".repeat(crate::api::MAX_ID_LEN + 1);
        let mut bytes = header().to_vec();
        encode(&Entry::Put(s), &mut bytes);
        encode(&Entry::Settle(RecordId { run: 7, seq: 9 }), &mut bytes);
        let (pieces, _) = decode_all(&bytes);
        assert!(matches!(pieces[0], Piece::Damaged { .. }), "{pieces:?}");
    }

    #[test]
    fn headers_say_partial_newer_or_damaged() {
        let h = header();
        assert_eq!(read_header(&h[..5]), Header::Partial);
        assert_eq!(read_header(&[]), Header::Partial);
        let mut newer = h;
        newer[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let crc = crc32fast::hash(&newer[..12]);
        newer[12..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(read_header(&newer), Header::Newer(VERSION + 1));
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(read_header(&bad), Header::Damaged);
        assert_eq!(read_header(b"garbage"), Header::Damaged);
    }

    #[test]
    fn a_long_error_is_cut_at_a_char_boundary() {
        let mut s = stored(3, 1);
        s.attempts.last_error = Some("é".repeat(MAX_ERROR_LEN));
        let mut bytes = header().to_vec();
        encode(&Entry::Put(s), &mut bytes);
        let (pieces, end) = decode_all(&bytes);
        assert_eq!(end, End::Clean);
        let Piece::Entry(Entry::Put(back)) = &pieces[0] else {
            panic!("a put")
        };
        assert!(back.attempts.last_error.as_ref().expect("error").len() <= MAX_ERROR_LEN);
    }
}
