//! The engine's decode scheduler: decode steps of concurrent generations on one engine (threads
//! of a Rust service, several C sessions, several Python threads) run as one batched forward
//! pass, without the callers doing anything.
//!
//! A generation in its decode phase holds a [`Ticket`], which counts it as live. Each decode
//! step sends its token and its cache to the scheduler's thread and waits for the logits. The
//! thread gathers the steps that arrive while it waits, until every live generation has sent one
//! or [`GATHER_WINDOW`] has passed since the first (a caller busy elsewhere never holds up the
//! others for longer), runs them as one [`Model::forward_batch`], and sends each its cache and
//! its row back. A generation alone is served at once. Prefills run on their callers' threads.

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::model::Model;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Longest wait for more decode steps once one has arrived.
pub(crate) const GATHER_WINDOW: Duration = Duration::from_millis(2);

/// Most decode steps in one pass.
const MAX_BATCH: usize = 64;

/// One decode step waiting for its pass.
struct Step {
    token: u32,
    cache: Cache,
    reply: SyncSender<(Cache, Result<Vec<f32>>)>,
}

/// The scheduler of one engine: its thread starts with the first decode step.
#[derive(Debug)]
pub(crate) struct Scheduler {
    model: Model,
    sender: OnceLock<Mutex<Sender<Step>>>,
    live: Arc<AtomicUsize>,
}

/// Counts a generation as live (decoding) while it exists.
#[derive(Debug)]
pub(crate) struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Scheduler {
    pub(crate) fn new(model: Model) -> Scheduler {
        Scheduler {
            model,
            sender: OnceLock::new(),
            live: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A ticket for a generation entering its decode phase.
    pub(crate) fn ticket(&self) -> Ticket {
        self.live.fetch_add(1, Ordering::SeqCst);
        Ticket(Arc::clone(&self.live))
    }

    /// The logits after `token`, appended to `cache`, computed in a pass with whatever other
    /// decode steps are waiting. The cache travels to the scheduler's thread and back.
    pub(crate) fn decode(&self, token: u32, cache: &mut Cache) -> Result<Vec<f32>> {
        let sender = self.sender.get_or_init(|| Mutex::new(self.spawn()));
        let (reply, answer) = sync_channel(1);
        let moved = std::mem::replace(cache, Cache::new(0, false, false, 0));
        let sent = sender.lock().unwrap_or_else(|p| p.into_inner()).send(Step {
            token,
            cache: moved,
            reply,
        });
        if let Err(std::sync::mpsc::SendError(step)) = sent {
            // The thread is gone (it cannot be, while the engine lives): run the step here.
            *cache = step.cache;
            return Ok(self.model.forward_last(&[token], cache)?.last().to_vec());
        }
        let (back, logits) = answer
            .recv()
            .map_err(|_| Error::Internal("the decode scheduler stopped".into()))?;
        *cache = back;
        logits
    }

    fn spawn(&self) -> Sender<Step> {
        let (tx, rx) = channel();
        let (model, live) = (self.model.clone(), Arc::clone(&self.live));
        std::thread::Builder::new()
            .name("r1-decode".into())
            .spawn(move || serve(&model, &rx, &live))
            .map(|_| tx)
            .unwrap_or_else(|_| {
                // No thread: a sender whose receiver is gone, so each step runs on its caller.
                channel().0
            })
    }
}

/// The scheduler's loop: gather, run, answer; it ends when the engine (the sender) is dropped.
fn serve(model: &Model, rx: &Receiver<Step>, live: &AtomicUsize) {
    while let Ok(first) = rx.recv() {
        let mut steps = vec![first];
        let deadline = Instant::now() + GATHER_WINDOW;
        while steps.len() < live.load(Ordering::SeqCst).clamp(1, MAX_BATCH) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(step) => steps.push(step),
                Err(_) => break,
            }
        }
        run(model, steps);
    }
}

/// One pass for all `steps`; if it fails, each step alone, so that each gets its own result.
fn run(model: &Model, mut steps: Vec<Step>) {
    let tokens: Vec<[u32; 1]> = steps.iter().map(|s| [s.token]).collect();
    let inputs: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
    let result = {
        let mut caches: Vec<&mut Cache> = steps.iter_mut().map(|s| &mut s.cache).collect();
        model.forward_batch(&inputs, &mut caches)
    };
    match result {
        Ok(logits) => {
            for (row, step) in steps.into_iter().enumerate() {
                let out = logits
                    .row(row)
                    .map(<[f32]>::to_vec)
                    .ok_or_else(|| Error::Internal(format!("no logits row {row}")));
                let _ = step.reply.send((step.cache, out));
            }
        }
        Err(_) if steps.len() > 1 => {
            for mut step in steps {
                let out = model
                    .forward_last(&[step.token], &mut step.cache)
                    .map(|l| l.last().to_vec());
                let _ = step.reply.send((step.cache, out));
            }
        }
        Err(e) => {
            if let Some(step) = steps.pop() {
                let _ = step.reply.send((step.cache, Err(e)));
            }
        }
    }
}
