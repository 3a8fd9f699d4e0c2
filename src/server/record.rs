//! The one line per finished transfer (fbtftp's and pin/tftp's session record: the options
//! asked and granted, what was sent and resent, how long it took and how it ended), and its
//! count in the metrics. Every executor calls [`ended`] once per transfer.

use std::borrow::Cow;
use std::time::Instant;

use super::ending::Ending;
use super::metrics;
use super::session::Meta;
use super::Shared;
use crate::transfer::Transfer;

/// Logs and counts a transfer that ended as `ending`; remembers whether its client answered its
/// OACK (see [`OptionsIgnored`](super::admit::OptionsIgnored)).
pub(crate) fn ended(shared: &Shared, meta: &Meta, t: &Transfer, ending: Ending) {
    if ending == Ending::TimedOut && t.oack_unanswered() {
        tracing::info!(peer = %meta.peer, file = %meta.filename, "the client never answered the OACK (twice in a row and its requests for this file are answered without options)");
        shared
            .options_ignored
            .unanswered(meta.peer.ip(), &meta.filename, Instant::now());
    } else if t.options().has_oack() && !t.oack_unanswered() {
        shared
            .options_ignored
            .answered(meta.peer.ip(), &meta.filename);
    }
    let stats = t.stats();
    let opts = t.options();
    let duration = stats.duration(Instant::now());
    metrics::with_counters(|c| c.ended(ending, stats, duration));
    let secs = duration.as_secs_f64();
    let rate_kib = if secs > 0.0 {
        stats.bytes as f64 / 1024.0 / secs
    } else {
        0.0
    };
    let outcome = ending.label();
    let code = ending.code();
    // The retransmission timeout the client fixed, or "adaptive".
    let timeout = match opts.timeout() {
        Some(fixed) => Cow::Owned(format!("{}ms", fixed.as_millis())),
        None => Cow::Borrowed("adaptive"),
    };
    macro_rules! line {
        ($level:ident, $msg:expr) => {
            tracing::$level!(
                peer = %meta.peer,
                file = %meta.filename,
                mode = %meta.mode.as_str(),
                asked = %meta.asked,
                blksize = opts.blksize().get(),
                windowsize = opts.windowsize().get(),
                timeout = %timeout,
                tsize = opts.tsize(),
                bytes = stats.bytes,
                blocks = stats.blocks,
                sent = stats.sent,
                retransmits = stats.retransmits,
                spurious = stats.spurious,
                ms = (secs * 1000.0) as u64,
                kib_per_s = rate_kib as u64,
                outcome,
                code,
                $msg
            )
        };
    }
    match ending {
        Ending::Complete => line!(info, "transfer complete"),
        // UEFI firmware asks for the size first and ends that transfer at once: routine.
        Ending::Probe => line!(debug, "tsize probe answered"),
        Ending::Cancelled(_) => line!(info, "transfer ended by the client"),
        Ending::TimedOut => line!(warn, "transfer timed out: the client went silent"),
        Ending::Protocol(_) => line!(warn, "transfer failed: the client broke the protocol"),
        Ending::FileChanged => line!(warn, "transfer aborted: the file changed while served"),
        Ending::ReadFailed => line!(warn, "transfer aborted: the file could not be read"),
        Ending::Internal => line!(warn, "transfer failed"),
        Ending::Unreachable => line!(warn, "transfer ended: the client's port is closed"),
        Ending::Replaced => line!(
            info,
            "transfer ended: the client asked again from the same port"
        ),
        Ending::NotStarted => line!(warn, "transfer not started"),
    }
}
