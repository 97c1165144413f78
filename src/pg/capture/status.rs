//! What the rest of the gateway sees of WAL capture: the refusal `/readyz` reports and
//! the `rowcast_capture*` metrics.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::Refusal;

/// Shared between the capturer task and the HTTP handlers.
#[derive(Debug, Default)]
pub struct CaptureStatus {
    /// Set while WAL capture is refused; `/readyz` answers 503 with it, because no
    /// change reaches any client until an operator acts.
    refusal: Mutex<Option<Refusal>>,
    /// True on the replica holding the capturer lock (`rowcast_capturer`).
    capturer: AtomicBool,
    /// The last commit LSN applied to `change_log` (`rowcast_capture_lsn`).
    lsn: AtomicU64,
    /// WAL the slot holds beyond what was applied (`rowcast_capture_lag_bytes`): what
    /// an operator watches so a stalled capturer never fills the disk unnoticed.
    lag_bytes: AtomicU64,
    /// Refusals seen (`rowcast_capture_refusals_total`), for alerting.
    refusals: AtomicU64,
}

impl CaptureStatus {
    /// Records a refusal; returns true when it is new (so it is logged once).
    pub fn refuse(&self, refusal: Refusal) -> bool {
        let mut current = self.refusal.lock();
        if current.as_ref() == Some(&refusal) {
            return false;
        }
        *current = Some(refusal);
        self.refusals.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Clears the refusal once capture runs again.
    pub fn clear(&self) {
        *self.refusal.lock() = None;
    }

    /// Why capture is refused, if it is.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal.lock().clone()
    }

    /// Marks this replica as the capturer or not.
    pub fn set_capturer(&self, holding: bool) {
        self.capturer.store(holding, Ordering::Relaxed);
    }

    /// Whether this replica holds the capturer lock.
    pub fn is_capturer(&self) -> bool {
        self.capturer.load(Ordering::Relaxed)
    }

    /// Records the last applied commit LSN.
    pub fn set_lsn(&self, lsn: u64) {
        self.lsn.store(lsn, Ordering::Relaxed);
    }

    /// Records how much WAL the slot holds beyond what was applied.
    pub fn set_lag_bytes(&self, bytes: u64) {
        self.lag_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Appends the capture metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let refused = u8::from(self.refusal.lock().is_some());
        for (name, kind, help, value) in [
            (
                "rowcast_capturer",
                "gauge",
                "1 on the replica that holds the WAL capturer lock.",
                u64::from(self.is_capturer()),
            ),
            (
                "rowcast_capture_lsn",
                "gauge",
                "The last commit LSN applied to change_log by WAL capture.",
                self.lsn.load(Ordering::Relaxed),
            ),
            (
                "rowcast_capture_lag_bytes",
                "gauge",
                "WAL held by the slot beyond what was applied to change_log.",
                self.lag_bytes.load(Ordering::Relaxed),
            ),
            (
                "rowcast_capture_refused",
                "gauge",
                "1 while WAL capture is refused (see /readyz for the reason).",
                u64::from(refused),
            ),
            (
                "rowcast_capture_refusals_total",
                "counter",
                "WAL capture refusals seen.",
                self.refusals.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}
