//! The record layer of an established wss connection. rustls does the handshake; once it is
//! over, the traffic keys are taken out through the API rustls keeps for kernel TLS
//! (`dangerous_into_kernel_connection`), and records are opened and sealed here with ring.
//!
//! Why: rustls' own record layer keeps each direction's AES-GCM key schedule and GHASH table
//! (544 bytes apiece in ring) and the connection's state beside them for the connection's
//! whole life, which made an idle wss connection cost 2.25x an idle ws one. Here an idle
//! connection holds each direction's key, IV and sequence number; the built keys of the
//! connections that moved records last are kept per worker thread ([`keys`]). TLS 1.3 key
//! updates still go through rustls' key schedule, which is kept for that alone.
//!
//! What is done here is the record protection of RFC 8446 section 5 and RFC 5246 section
//! 6.2.3.3 (with RFC 7905 for ChaCha20-Poly1305), for the AEAD suites rustls negotiates with
//! ring, and the post-handshake messages a server can be sent: a TLS 1.3 KeyUpdate, a TLS 1.2
//! renegotiation request (refused, as rustls refuses it), alerts.

use std::ops::Range;

use ring::aead::{Aad, Nonce};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{AlertDescription, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite};

use self::keys::{Direction, Lease};

const HEADER: usize = 5;
const TAG: usize = 16;
/// The largest plaintext a record may carry (RFC 8446 5.1, RFC 5246 6.2.1).
pub const MAX_PLAIN: usize = 1 << 14;
/// The most a sealed record adds to its plaintext: header, TLS 1.2 explicit nonce, tag (TLS
/// 1.3's content type byte is less than the explicit nonce).
pub const OVERHEAD: usize = HEADER + 8 + TAG;

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const CLIENT_HELLO: u8 = 1;
const KEY_UPDATE: u8 = 24;
/// What a peer may send that costs us work and brings no data, as rustls allows it: key
/// updates in a row, renegotiation requests, warnings. A key update costs a key derivation
/// and a fresh cipher key (microseconds, for 27 bytes), so it counts as "in a row" until
/// [`DATA_PER_KEY_UPDATE`] of data came after it, not merely a byte: a client alternating
/// one-byte records with key updates would otherwise make every read a hundred times dearer.
const KEY_UPDATES_IN_A_ROW: u8 = 32;
/// Data after a key update that makes the next one a fresh start. Clients update keys near
/// the cipher's limit (millions of records) or when told to, never per message.
const DATA_PER_KEY_UPDATE: u32 = 1 << 20;
/// Application data records with nothing in them, in a row: allowed (RFC 8446 5.1), but each
/// costs an open and carries nothing, so a stream of them is work without end for 21 bytes
/// apiece. OpenSSL's `max_empty_records` is the same 32.
const EMPTY_IN_A_ROW: u8 = 32;
const RENEGOTIATIONS: u8 = 1;
const WARNINGS: u8 = 4;

/// Why a record could not be opened or sealed, and the alert the peer is owed for it.
#[derive(Debug)]
pub struct Fail {
    pub error: rustls::Error,
    pub alert: Option<AlertDescription>,
}

fn fail(alert: AlertDescription, why: &str) -> Fail {
    Fail { error: rustls::Error::General(why.into()), alert: Some(alert) }
}

/// A TLS 1.3 connection keeps rustls' key schedule; this is for one that somehow has none.
fn no_schedule() -> Fail {
    fail(AlertDescription::InternalError, "no TLS key schedule for a key update")
}

/// What one record held.
#[derive(Debug, PartialEq)]
pub enum Opened {
    /// Application data, at this range of the record's bytes.
    Data(Range<usize>),
    /// close_notify: no more data will come.
    Closed,
    /// A message handled here (a key update, a warning).
    Nothing,
}

/// The per-record nonce: the IV with the sequence number XORed into its last 8 bytes (RFC
/// 8446 5.3; RFC 7905 for TLS 1.2's ChaCha20-Poly1305; the nonce rustls also sends as TLS
/// 1.2 AES-GCM's explicit part).
fn nonce(iv: &[u8; 12], seq: u64) -> [u8; 12] {
    let mut n = *iv;
    for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    n
}

/// TLS 1.2's additional data: sequence number, type, version, plaintext length.
fn aad12(seq: u64, typ: u8, plain_len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9..11].copy_from_slice(&[3, 3]);
    a[11..13].copy_from_slice(&(plain_len as u16).to_be_bytes());
    a
}

/// The record layer of one connection past its handshake.
pub struct Records {
    tls13: bool,
    rx: Direction,
    tx: Direction,
    /// TLS 1.3 only: rustls' key schedule, for the secrets after a key update.
    kernel: Option<Box<KernelConnection<ServerConnectionData>>>,
    /// Records sealed under one key before a TLS 1.3 connection moves to the next and a TLS
    /// 1.2 one, which cannot, is closed: the suite's confidentiality limit (RFC 8446 5.5).
    limit: u64,
    /// The peer asked for our key update: it goes out before the next record we seal (RFC
    /// 8446 4.6.3), once however many requests came.
    answer_owed: bool,
    /// close_notify is sealed: nothing more is.
    closed: bool,
    key_updates: u8,
    /// Data bytes opened since the last key update (saturating).
    since_key_update: u32,
    empty_records: u8,
    renegotiations: u8,
    warnings: u8,
}

impl Records {
    pub fn new(secrets: ExtractedSecrets, kernel: KernelConnection<ServerConnectionData>) -> Result<Self, Fail> {
        let tls13 = match kernel.protocol_version() {
            ProtocolVersion::TLSv1_3 => true,
            ProtocolVersion::TLSv1_2 => false,
            _ => return Err(fail(AlertDescription::InternalError, "unsupported TLS version")),
        };
        let limit = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        let (tx, rx) = (Direction::new(secrets.tx.1, secrets.tx.0), Direction::new(secrets.rx.1, secrets.rx.0));
        // Both keys are usable, or the connection is refused now rather than at its first
        // record; built, they are kept for the first records.
        tx.lease()?;
        if let Err(f) = rx.lease() {
            tx.forget();
            return Err(f);
        }
        Ok(Self {
            tls13,
            rx,
            tx,
            kernel: tls13.then(|| Box::new(kernel)),
            limit,
            answer_owed: false,
            closed: false,
            key_updates: 0,
            since_key_update: 0,
            empty_records: 0,
            renegotiations: 0,
            warnings: 0,
        })
    }

    pub fn protocol_version(&self) -> ProtocolVersion {
        if self.tls13 {
            ProtocolVersion::TLSv1_3
        } else {
            ProtocolVersion::TLSv1_2
        }
    }

    /// Both directions under the same `secrets` (so what is sealed opens here too), with no
    /// key schedule: for the properties in `tests`.
    #[cfg(test)]
    pub fn for_tests(tls13: bool, secrets: impl Fn() -> rustls::ConnectionTrafficSecrets) -> Self {
        Self {
            tls13,
            rx: Direction::new(secrets(), 0),
            tx: Direction::new(secrets(), 0),
            kernel: None,
            limit: u64::MAX,
            answer_owed: false,
            closed: false,
            key_updates: 0,
            since_key_update: 0,
            empty_records: 0,
            renegotiations: 0,
            warnings: 0,
        }
    }

    #[cfg(test)]
    pub fn set_limit(&mut self, records: u64) {
        self.limit = records;
    }

    #[cfg(test)]
    pub fn tx_seq(&self) -> u64 {
        self.tx.seq
    }

    /// The length of the record at the start of `buf`, header included, once all of it is
    /// there; a record longer than the protocol allows fails at its header.
    pub fn whole(&self, buf: &[u8]) -> Result<Option<usize>, Fail> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        // Every record after the handshake says TLS 1.2 in its header, in TLS 1.3 too.
        if buf[1..3] != [3, 3] {
            return Err(fail(AlertDescription::DecodeError, "not a TLS record"));
        }
        let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
        let max = if self.tls13 { MAX_PLAIN + 256 } else { MAX_PLAIN + 2048 };
        if len > max {
            return Err(fail(AlertDescription::RecordOverflow, "TLS record too long"));
        }
        Ok((buf.len() >= HEADER + len).then_some(HEADER + len))
    }

    /// Opens the whole record `rec` in place (one [`Self::whole`] measured). What it owes the
    /// peer (the answer to a key update, a refusal to renegotiate) is sealed onto `outbox`.
    /// `key` is the receive key taken for an earlier record of the same read, if any: one
    /// lease serves every record a read brings (a handshake message may change the key).
    pub fn open(&mut self, rec: &mut [u8], outbox: &mut Vec<u8>, key: &mut Option<Lease>) -> Result<Opened, Fail> {
        let bad_mac = || Fail { error: rustls::Error::DecryptError, alert: Some(AlertDescription::BadRecordMac) };
        let k = match key {
            Some(k) => k,
            None => key.insert(self.rx.lease()?),
        };
        let seq = self.rx.seq;
        let typ = rec[0];
        let (content, range) = if self.tls13 {
            // After the handshake only protected records may come (a change_cipher_spec is
            // allowed during the handshake alone, RFC 8446 5).
            if typ != APPLICATION_DATA {
                return Err(fail(AlertDescription::UnexpectedMessage, "unprotected TLS record after the handshake"));
            }
            let header: [u8; HEADER] = rec[..HEADER].try_into().expect("a whole record has its header");
            let n = Nonce::assume_unique_for_key(nonce(&k.iv, seq));
            let len = k.key.open_in_place(n, Aad::from(header), &mut rec[HEADER..]).map_err(|_| bad_mac())?.len();
            // The inner plaintext: content, the real content type, zero padding; 2^14 + 1
            // bytes at most, padding included (RFC 8446 5.4).
            if len > MAX_PLAIN + 1 {
                return Err(fail(AlertDescription::RecordOverflow, "TLS plaintext too long"));
            }
            let Some(end) = rec[HEADER..HEADER + len].iter().rposition(|&b| b != 0) else {
                return Err(fail(AlertDescription::UnexpectedMessage, "TLS record with no content type"));
            };
            (rec[HEADER + end], HEADER..HEADER + end)
        } else {
            if !matches!(typ, APPLICATION_DATA | ALERT | HANDSHAKE) {
                return Err(fail(AlertDescription::UnexpectedMessage, "unexpected TLS record type"));
            }
            let explicit = if k.gcm { 8 } else { 0 };
            let Some(len) = (rec.len() - HEADER).checked_sub(explicit + TAG) else {
                return Err(bad_mac());
            };
            if len > MAX_PLAIN {
                return Err(fail(AlertDescription::RecordOverflow, "TLS plaintext too long"));
            }
            let n = if k.gcm {
                // The salt from the key block, then the nonce the sender chose.
                let mut n = [0u8; 12];
                n[..4].copy_from_slice(&k.iv[..4]);
                n[4..].copy_from_slice(&rec[HEADER..HEADER + 8]);
                n
            } else {
                nonce(&k.iv, seq)
            };
            let n = Nonce::assume_unique_for_key(n);
            let at = HEADER + explicit;
            k.key.open_in_place(n, Aad::from(aad12(seq, typ, len)), &mut rec[at..]).map_err(|_| bad_mac())?;
            (typ, at..at + len)
        };
        self.rx.seq =
            seq.checked_add(1).ok_or_else(|| fail(AlertDescription::InternalError, "TLS sequence exhausted"))?;
        match content {
            APPLICATION_DATA => {
                if range.is_empty() {
                    self.empty_records += 1;
                    if self.empty_records > EMPTY_IN_A_ROW {
                        return Err(fail(AlertDescription::UnexpectedMessage, "too many empty TLS records in a row"));
                    }
                } else {
                    self.since_key_update = self.since_key_update.saturating_add(range.len() as u32);
                    self.empty_records = 0;
                }
                Ok(Opened::Data(range))
            }
            ALERT => self.alert(&rec[range]),
            HANDSHAKE => {
                *key = None;
                self.post_handshake(&rec[range], outbox)
            }
            CHANGE_CIPHER_SPEC => {
                Err(fail(AlertDescription::UnexpectedMessage, "change_cipher_spec after the handshake"))
            }
            _ => Err(fail(AlertDescription::UnexpectedMessage, "unknown TLS content type")),
        }
    }

    fn alert(&mut self, a: &[u8]) -> Result<Opened, Fail> {
        let &[level @ (1 | 2), desc] = a else {
            return Err(fail(AlertDescription::IllegalParameter, "malformed TLS alert"));
        };
        let desc = AlertDescription::from(desc);
        let warning = level == 1;
        match desc {
            AlertDescription::CloseNotify => Ok(Opened::Closed),
            // A warning is ignored, a few times: in TLS 1.3 only user_canceled may be one
            // (RFC 8446 6).
            _ if warning && (desc == AlertDescription::UserCanceled || !self.tls13) => {
                self.warnings += 1;
                if self.warnings > WARNINGS {
                    return Err(fail(AlertDescription::UnexpectedMessage, "too many TLS warning alerts"));
                }
                Ok(Opened::Nothing)
            }
            _ => Err(Fail { error: rustls::Error::AlertReceived(desc), alert: None }),
        }
    }

    /// A handshake message after the handshake: a TLS 1.3 KeyUpdate is followed, a TLS 1.2
    /// renegotiation is refused with a warning (as rustls does); anything else is an error.
    fn post_handshake(&mut self, msg: &[u8], outbox: &mut Vec<u8>) -> Result<Opened, Fail> {
        if !self.tls13 {
            if msg.first() == Some(&CLIENT_HELLO) && self.renegotiations < RENEGOTIATIONS && !self.closed {
                self.renegotiations += 1;
                let mut out = [0u8; 2 * (4 + 1 + OVERHEAD)];
                let n = self.seal(ALERT, &[1, AlertDescription::NoRenegotiation.into()], &mut out)?;
                outbox.extend_from_slice(&out[..n]);
                return Ok(Opened::Nothing);
            }
            return Err(fail(AlertDescription::UnexpectedMessage, "unexpected TLS handshake message"));
        }
        // A KeyUpdate is 5 bytes and changes the key: it must be the record's only message
        // (RFC 8446 5.1: no handshake message may span a key change). One split across two
        // records, which the RFC allows and no client does, is refused.
        match msg {
            &[KEY_UPDATE, 0, 0, 1, requested] => {
                if requested > 1 {
                    return Err(fail(AlertDescription::IllegalParameter, "malformed TLS KeyUpdate"));
                }
                if self.since_key_update >= DATA_PER_KEY_UPDATE {
                    self.key_updates = 0;
                }
                self.since_key_update = 0;
                self.key_updates += 1;
                if self.key_updates > KEY_UPDATES_IN_A_ROW {
                    return Err(fail(AlertDescription::UnexpectedMessage, "too many TLS key updates"));
                }
                let Some(kernel) = self.kernel.as_mut() else { return Err(no_schedule()) };
                let (seq, secrets) = kernel.update_rx_secret().map_err(|e| Fail { error: e, alert: None })?;
                self.rx.forget();
                self.rx = Direction::new(secrets, seq);
                // Sealed before our next record; nothing after our close_notify.
                self.answer_owed |= requested == 1 && !self.closed;
                Ok(Opened::Nothing)
            }
            [KEY_UPDATE, 0, 0, 1, _, ..] => {
                Err(fail(AlertDescription::UnexpectedMessage, "TLS KeyUpdate not at a record's end"))
            }
            [KEY_UPDATE, ..] => Err(fail(AlertDescription::DecodeError, "malformed TLS KeyUpdate")),
            _ => Err(fail(AlertDescription::UnexpectedMessage, "unexpected TLS handshake message")),
        }
    }

    fn next_tx(&mut self) -> Result<(), Fail> {
        let Some(kernel) = self.kernel.as_mut() else { return Err(no_schedule()) };
        let (seq, secrets) = kernel.update_tx_secret().map_err(|e| Fail { error: e, alert: None })?;
        self.tx.forget();
        self.tx = Direction::new(secrets, seq);
        Ok(())
    }

    /// Seals `plain` as records of content type `typ` into `out`, which has room for it and
    /// [`OVERHEAD`] for every [`MAX_PLAIN`] of it, and one record more; returns the bytes
    /// written.
    pub fn seal(&mut self, typ: u8, plain: &[u8], out: &mut [u8]) -> Result<usize, Fail> {
        if self.closed {
            let error = rustls::Error::General("TLS connection closed for writing".into());
            return Err(Fail { error, alert: None });
        }
        let mut k = self.tx.lease()?;
        let mut at = 0;
        for chunk in plain.chunks(MAX_PLAIN) {
            // The key update a peer asked for, or ours at the limit, under the old key.
            if self.answer_owed || (self.tls13 && self.tx.seq >= self.limit) {
                at += self.seal_one(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], &mut out[at..], Some(&k))?;
                self.answer_owed = false;
                drop(k);
                self.next_tx()?;
                k = self.tx.lease()?;
            }
            if self.tx.seq >= self.limit {
                // TLS 1.2 has no key update: the connection ends, with a close_notify.
                let error = rustls::Error::General("TLS 1.2 record limit of the key reached".into());
                return Err(Fail { error, alert: Some(AlertDescription::CloseNotify) });
            }
            at += self.seal_one(typ, chunk, &mut out[at..], Some(&k))?;
        }
        Ok(at)
    }

    /// Seals one record under `k` (this direction's key when `None`).
    fn seal_one(&mut self, typ: u8, plain: &[u8], out: &mut [u8], k: Option<&Lease>) -> Result<usize, Fail> {
        let own;
        let k = match k {
            Some(k) => k,
            None => {
                own = self.tx.lease()?;
                &own
            }
        };
        let short = || fail(AlertDescription::InternalError, "no room to seal a TLS record");
        if plain.len() > MAX_PLAIN || out.len() < plain.len() + OVERHEAD {
            return Err(short());
        }
        let seq = self.tx.seq;
        let n = nonce(&k.iv, seq);
        let (body, tag_at) = if self.tls13 {
            let len = plain.len() + 1 + TAG;
            out[..HEADER].copy_from_slice(&[APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8]);
            out[HEADER..HEADER + plain.len()].copy_from_slice(plain);
            out[HEADER + plain.len()] = typ;
            let header: [u8; HEADER] = out[..HEADER].try_into().expect("5 bytes");
            let end = HEADER + plain.len() + 1;
            let tag = k
                .key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::from(header), &mut out[HEADER..end])
                .map_err(|_| short())?;
            out[end..end + TAG].copy_from_slice(tag.as_ref());
            (HEADER + len, end)
        } else {
            let explicit = if k.gcm { 8 } else { 0 };
            let len = explicit + plain.len() + TAG;
            out[..HEADER].copy_from_slice(&[typ, 3, 3, (len >> 8) as u8, len as u8]);
            if k.gcm {
                out[HEADER..HEADER + 8].copy_from_slice(&n[4..]);
            }
            let at = HEADER + explicit;
            let end = at + plain.len();
            out[at..end].copy_from_slice(plain);
            let tag = k
                .key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(n),
                    Aad::from(aad12(seq, typ, plain.len())),
                    &mut out[at..end],
                )
                .map_err(|_| short())?;
            out[end..end + TAG].copy_from_slice(tag.as_ref());
            (HEADER + len, end)
        };
        debug_assert_eq!(body, tag_at + TAG);
        // A sequence number is never used twice under one key: past u64::MAX there is none.
        self.tx.seq =
            seq.checked_add(1).ok_or_else(|| fail(AlertDescription::InternalError, "TLS sequence exhausted"))?;
        Ok(body)
    }

    /// Application data sealed into `out` (see [`Self::seal`]).
    pub fn seal_data(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, Fail> {
        self.seal(APPLICATION_DATA, plain, out)
    }

    /// A sealed close_notify for `out`: the last record this connection seals.
    pub fn close_notify(&mut self, out: &mut [u8]) -> Result<usize, Fail> {
        if self.closed {
            return Ok(0);
        }
        self.closed = true;
        self.seal_one(ALERT, &[1, AlertDescription::CloseNotify.into()], out, None)
    }

    /// A sealed alert that ends the connection (close_notify as a warning, anything else
    /// fatal), best effort: the connection is ending anyway. None after our close_notify.
    pub fn last_alert(&mut self, alert: AlertDescription) -> Option<Vec<u8>> {
        if self.closed {
            return None;
        }
        self.closed = true;
        let level = if alert == AlertDescription::CloseNotify { 1 } else { 2 };
        let mut out = vec![0u8; 2 + OVERHEAD];
        let n = self.seal_one(ALERT, &[level, alert.into()], &mut out, None).ok()?;
        out.truncate(n);
        Some(out)
    }
}

impl Drop for Records {
    /// The connection is over: its kept keys are dropped now, not when others displace them.
    fn drop(&mut self) {
        self.rx.forget();
        self.tx.forget();
    }
}

mod handover;
mod keys;
#[cfg(test)]
mod tests;
