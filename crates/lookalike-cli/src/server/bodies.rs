//! Request bodies: read whole before a handler runs, within the upload limit, the time limits and
//! the server's memory budget for bodies held at once.
//!
//! Only a request that a route and (for writes) the token accept is read into memory, and the
//! budget is taken as its bytes arrive, never from what its `Content-Length` declares: a client
//! that declares a large body and trickles it holds only what it sent. When the budget is full,
//! the client that has gone longest without sending [`PROGRESS_BYTES`] is cut off to make room
//! for one that is sending; only when every holder is sending is the newcomer refused (503).
//! A request that no route or no token accepts is answered without holding anything: its body
//! is read and dropped (so the client, still sending, sees the answer instead of a reset
//! connection), unless it asked `Expect: 100-continue`, in which case it is answered before it
//! sends anything.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tokio::sync::Notify;

use super::error::ApiError;
use super::Shared;

/// A body must arrive within this in all (and without a pause longer than the client timeout).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// Room for the multipart framing and form fields around an image of the upload limit.
pub const MULTIPART_ROOM: usize = 64 * 1024;
/// A holder counts as sending while it receives this much at least every [`STALL`].
const PROGRESS_BYTES: usize = 16 * 1024;
/// A holder that received less than [`PROGRESS_BYTES`] for this long may be cut off for room.
const STALL: Duration = Duration::from_secs(2);
/// Pieces (chunks, or reads of the socket) a body may arrive in before their average size counts.
const FREE_PIECES: usize = 1024;
/// Smallest average piece after [`FREE_PIECES`]: every piece costs the server a wake-up and its
/// framing, so a body sent a byte per chunk cost 170 times the CPU of the same bytes sent whole.
const MIN_AVERAGE_PIECE: usize = 256;

/// The memory for request bodies held at once, taken as bytes arrive.
pub struct BodyBudget {
    capacity: usize,
    holders: Mutex<Holders>,
}

#[derive(Default)]
struct Holders {
    used: usize,
    next_id: u64,
    by_id: HashMap<u64, Holder>,
}

struct Holder {
    bytes: usize,
    /// When it last completed a [`PROGRESS_BYTES`] step (or started).
    progressed: Instant,
    /// Bytes received since then.
    since_progress: usize,
    cut: Arc<Notify>,
}

/// One body's share of the budget, given back when dropped.
pub struct BodyHold {
    budget: Arc<BodyBudget>,
    id: u64,
    cut: Arc<Notify>,
}

/// Why a body's next bytes got no room.
#[derive(Debug, PartialEq, Eq)]
pub struct BudgetFull;

impl BodyBudget {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            holders: Mutex::default(),
        })
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, Holders> {
        self.holders.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A share of the budget that holds nothing yet.
    pub fn hold(self: &Arc<Self>) -> BodyHold {
        let cut = Arc::new(Notify::new());
        let mut holders = self.holders();
        let id = holders.next_id;
        holders.next_id += 1;
        holders.by_id.insert(
            id,
            Holder {
                bytes: 0,
                progressed: Instant::now(),
                since_progress: 0,
                cut: cut.clone(),
            },
        );
        BodyHold {
            budget: self.clone(),
            id,
            cut,
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.holders().used
    }
}

impl BodyHold {
    /// Takes room for `bytes` more; when the budget is full, cuts off the holder that has gone
    /// longest without progress (if it stalled for [`STALL`]) and takes its room instead.
    pub fn grow(&self, bytes: usize) -> Result<(), BudgetFull> {
        let now = Instant::now();
        let mut holders = self.budget.holders();
        let holders = &mut *holders;
        let me = holders.by_id.get_mut(&self.id).ok_or(BudgetFull)?;
        me.since_progress += bytes;
        if me.since_progress >= PROGRESS_BYTES {
            me.progressed = now;
            me.since_progress = 0;
        }
        while holders.used + bytes > self.budget.capacity {
            let stalest = holders
                .by_id
                .iter()
                .filter(|(&id, h)| id != self.id && h.bytes > 0 && now.duration_since(h.progressed) >= STALL)
                .min_by_key(|(_, h)| h.progressed)
                .map(|(&id, _)| id);
            let Some(stalest) = stalest else {
                return Err(BudgetFull);
            };
            let cut = holders.by_id.remove(&stalest).expect("found just above");
            holders.used -= cut.bytes;
            cut.cut.notify_one();
        }
        holders.used += bytes;
        holders.by_id.get_mut(&self.id).expect("checked above").bytes += bytes;
        Ok(())
    }

    /// Resolves when another body needed this one's room.
    pub async fn cut_off(&self) {
        self.cut.notified().await
    }
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        let mut holders = self.budget.holders();
        if let Some(me) = holders.by_id.remove(&self.id) {
            holders.used -= me.bytes;
        }
    }
}

#[derive(Debug)]
enum BodyError {
    TooLarge,
    TimedOut,
    Fragmented { pieces: usize, bytes: usize },
    Full,
    CutOff,
    Broken(String),
}

/// Reads a body of at most `limit` bytes whose pieces arrive with pauses no longer than `idle`,
/// keeping them under `hold`; without one the bytes are dropped as they come.
async fn read_body(
    mut body: std::pin::Pin<&mut Body>,
    limit: usize,
    idle: Duration,
    hold: Option<&BodyHold>,
) -> Result<Bytes, BodyError> {
    let started = tokio::time::Instant::now();
    let give_up = started + BODY_TIMEOUT;
    let mut last_piece = started;
    // One timer for the whole read, moved only when it fires early: resetting it for every
    // piece would cost more than reading the piece.
    let mut timer = pin!(tokio::time::sleep_until(give_up.min(started + idle)));
    let mut cut_off = pin!(async {
        match hold {
            Some(hold) => hold.cut_off().await,
            None => std::future::pending().await,
        }
    });
    let mut bytes = Vec::new();
    let (mut seen, mut pieces) = (0usize, 0usize);
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = &mut cut_off => return Err(BodyError::CutOff),
            () = &mut timer => {
                let due = give_up.min(last_piece + idle);
                if tokio::time::Instant::now() >= due {
                    return Err(BodyError::TimedOut);
                }
                timer.as_mut().reset(due);
                continue;
            }
        };
        let data = match frame {
            None => break,
            Some(Err(err)) => return Err(BodyError::Broken(err.to_string())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        last_piece = tokio::time::Instant::now();
        seen += data.len();
        pieces += 1;
        if seen > limit {
            return Err(BodyError::TooLarge);
        }
        if pieces > FREE_PIECES && seen < pieces * MIN_AVERAGE_PIECE {
            return Err(BodyError::Fragmented { pieces, bytes: seen });
        }
        if let Some(hold) = hold {
            hold.grow(data.len()).map_err(|BudgetFull| BodyError::Full)?;
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(bytes))
}

impl BodyError {
    fn into_response(self, state: &Shared) -> Response {
        let error = match self {
            Self::TooLarge => super::upload_too_large(state),
            Self::TimedOut => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive in time (a pause over {:.1} s, or over {} s in all)",
                    state.client_timeout.as_secs_f64(),
                    BODY_TIMEOUT.as_secs()
                ),
            ),
            Self::Fragmented { pieces, bytes } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_too_fragmented",
                format!(
                    "the request body came in {pieces} pieces for {bytes} bytes; \
                     send it in pieces of {MIN_AVERAGE_PIECE} bytes or more"
                ),
            ),
            Self::Full => {
                state.metrics.refused("bodies");
                ApiError::overloaded("the server is holding too many uploads; try again shortly")
            }
            Self::CutOff => {
                state.metrics.refused("stalled_body");
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "too_slow",
                    "the request body stalled while the server needed its memory for uploads in progress",
                )
            }
            Self::Broken(err) => ApiError::bad_request(format!("could not read the request body: {err}")),
        };
        error.into_response()
    }
}

/// The upload limit plus room for the form around it.
fn body_limit(state: &Shared) -> usize {
    state.max_upload_bytes + MULTIPART_ROOM
}

/// Inside the router, after the token check: reads the request's body completely before its
/// handler runs, the budget taken as it arrives. A handler that answers early would otherwise
/// leave the upload unread, and the connection would be cut under a client still sending before
/// it sees the answer.
pub async fn read_whole_body(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if HttpBody::size_hint(&body).exact() == Some(0) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let hold = state.bodies.hold();
    let mut body = pin!(body);
    let bytes = match read_body(body.as_mut(), body_limit(&state), state.client_timeout, Some(&hold)).await {
        Ok(bytes) => bytes,
        Err(BodyError::Full) => {
            // The rest is read and dropped, as for a request refused at once, so that a client
            // still sending sees the 503.
            drop(hold);
            let _ = read_body(body, body_limit(&state), state.client_timeout, None).await;
            return BodyError::Full.into_response(&state);
        }
        Err(err) => return err.into_response(&state),
    };
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    drop(hold);
    response
}

/// Answers `request` with `error` without holding its body: a client that asked
/// `Expect: 100-continue` is answered before it sends any; another one's body is read and
/// dropped (within the usual limits) so that it sees the answer.
pub async fn refuse(state: &Shared, request: Request, error: ApiError) -> Response {
    let (parts, body) = request.into_parts();
    let waits_to_send = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !waits_to_send && HttpBody::size_hint(&body).exact() != Some(0) {
        let _ = read_body(pin!(body), body_limit(state), state.client_timeout, None).await;
    }
    error.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_follows_bytes_and_the_stalest_holder_makes_room() {
        let budget = BodyBudget::new(100 * 1024);
        let stalled = budget.hold();
        stalled.grow(60 * 1024).unwrap();
        let sending = budget.hold();
        sending.grow(30 * 1024).unwrap();
        assert_eq!(budget.used(), 90 * 1024);
        let newcomer = budget.hold();
        assert_eq!(
            newcomer.grow(20 * 1024),
            Err(BudgetFull),
            "nobody has stalled yet: the newcomer waits its turn"
        );
        // Both have made progress just now; age the first one.
        budget.holders().by_id.get_mut(&stalled.id).unwrap().progressed -= STALL;
        newcomer.grow(20 * 1024).unwrap();
        assert_eq!(budget.used(), 50 * 1024, "the stalled holder's 60 KiB went");
        assert!(ready_at_once(stalled.cut_off()), "the stalled holder is told at once");
        assert_eq!(stalled.grow(1), Err(BudgetFull), "a holder cut off gets no more");
        drop(stalled);
        drop(sending);
        assert_eq!(budget.used(), 20 * 1024);
        drop(newcomer);
        assert_eq!(budget.used(), 0);
    }

    /// Whether `future` is ready on its first poll.
    fn ready_at_once(future: impl std::future::Future<Output = ()>) -> bool {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        pin!(future).poll(&mut context).is_ready()
    }

    #[tokio::test]
    async fn pieces_too_small_on_average_are_refused_early() {
        let small = pieces(vec![Bytes::from_static(b"x"); 5000]);
        let err = read_body(pin!(small), usize::MAX, Duration::from_secs(5), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BodyError::Fragmented { pieces, .. } if pieces == FREE_PIECES + 1),
            "{err:?}"
        );
        let fine = pieces(vec![Bytes::from(vec![0u8; MIN_AVERAGE_PIECE]); 5000]);
        assert_eq!(
            read_body(pin!(fine), usize::MAX, Duration::from_secs(5), None)
                .await
                .unwrap()
                .len(),
            0,
            "dropped as read"
        );
    }

    /// A body that yields `pieces` one frame each, all ready at once.
    fn pieces(pieces: Vec<Bytes>) -> Body {
        struct Pieces(std::collections::VecDeque<Bytes>);
        impl HttpBody for Pieces {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
                std::task::Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
            }
        }
        Body::new(Pieces(pieces.into()))
    }
}
