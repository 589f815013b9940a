//! Sessions: one conversation with a model, whose cache outlives each generation.
//!
//! A [`Session`] holds an engine, a cache and the token ids that cache holds. Each
//! [`Session::generate`] renders the whole conversation again, keeps the longest common prefix
//! of its ids with the cached ids, truncates the cache there and runs only the rest. R1
//! templates drop earlier turns' reasoning, so after a turn the reusable prefix ends where that
//! turn's assistant message began; the rule needs no knowledge of the template, so it holds for
//! every template.
//!
//! The generation a session starts owns the cache while it runs (so it is `Send + 'static`, like
//! any [`Generation`]) and gives it back when dropped; until then the session is busy.

use crate::cache::Cache;
use crate::chat_template::Message;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::generate::{CancelHandle, GenerateParams, Generation, Prompt};
use crate::trace::Trace;
use std::sync::{Arc, Mutex, MutexGuard};

/// What a session keeps between generations.
#[derive(Debug)]
struct Slot {
    /// The cache and the ids it holds; `None` while a generation has it.
    state: Option<(Cache, Vec<u32>)>,
    /// The last generation's generated ids and parsed trace.
    last_generated: Vec<u32>,
    last_trace: Option<Trace>,
}

/// Where a generation returns a session's cache.
#[derive(Debug, Clone)]
pub(crate) struct Home(Arc<Mutex<Slot>>);

impl Home {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A poisoned lock means a panic elsewhere; the slot's data is still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn give_back(&self, cache: Cache, ids: Vec<u32>, generated: Vec<u32>, trace: Option<Trace>) {
        let mut slot = self.lock();
        slot.state = Some((cache, ids));
        slot.last_generated = generated;
        slot.last_trace = trace;
    }
}

/// One conversation: an engine, a cache and the token history it holds.
#[derive(Debug)]
pub struct Session {
    engine: Engine,
    home: Home,
    cancel: CancelHandle,
}

fn busy() -> Error {
    Error::InvalidArgument(
        "the session is busy: a generation it started is still alive (finish or drop it first)".into(),
    )
}

impl Session {
    /// An empty conversation on `engine`.
    pub fn new(engine: Engine) -> Session {
        let cache = engine.model().new_cache();
        Session {
            engine,
            home: Home(Arc::new(Mutex::new(Slot {
                state: Some((cache, vec![])),
                last_generated: vec![],
                last_trace: None,
            }))),
            cancel: CancelHandle::new(),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A handle that cancels this session's running generation from any thread (each
    /// generation starts uncancelled).
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Generates the reply to `prompt`, the whole conversation so far, reusing the cache for the
    /// prefix it already holds. The returned generation owns the cache until it is dropped.
    pub fn generate(&mut self, prompt: &Prompt, params: &GenerateParams) -> Result<Generation> {
        let ids = self.engine.prompt_ids(prompt)?;
        let prepared = Generation::prepare(&self.engine, &ids, params)?;
        let (mut cache, cached) = self.home.lock().state.take().ok_or_else(busy)?;
        // Keep the longest common prefix, but always run at least one token: the last prompt
        // position's logits are not cached.
        let keep = common_prefix(&cached, &ids).min(ids.len() - 1);
        cache.truncate(keep);
        self.cancel.reset();
        Ok(Generation::begin(
            self.engine.clone(),
            prepared,
            ids,
            params,
            cache,
            Some(self.home.clone()),
            Some(self.cancel.clone()),
        ))
    }

    /// [`Session::generate`] of a chat: `messages` is the whole conversation so far.
    pub fn chat(&mut self, messages: &[Message], params: &GenerateParams) -> Result<Generation> {
        self.generate(&Prompt::Chat(messages.to_vec()), params)
    }

    /// Forgets the conversation (the cache's buffers are kept for reuse).
    pub fn reset(&mut self) -> Result<()> {
        self.truncate(0)
    }

    /// Keeps only the first `n` cached tokens.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        let mut slot = self.home.lock();
        let (cache, ids) = slot.state.as_mut().ok_or_else(busy)?;
        cache.truncate(n);
        ids.truncate(n);
        Ok(())
    }

    /// Token ids the cache holds (prompts and replies so far, less what was truncated).
    pub fn cached_ids(&self) -> Result<Vec<u32>> {
        let slot = self.home.lock();
        slot.state.as_ref().map(|(_, ids)| ids.clone()).ok_or_else(busy)
    }

    /// The last finished generation's generated ids.
    pub fn last_generated_ids(&self) -> Vec<u32> {
        self.home.lock().last_generated.clone()
    }

    /// The last finished generation's parsed trace.
    pub fn last_trace(&self) -> Option<Trace> {
        self.home.lock().last_trace.clone()
    }

    /// A deep copy: the fork starts with this session's cache and history, then the two diverge
    /// without touching each other.
    pub fn fork(&self) -> Result<Session> {
        let slot = self.home.lock();
        let (cache, ids) = slot.state.as_ref().ok_or_else(busy)?;
        Ok(Session {
            engine: self.engine.clone(),
            home: Home(Arc::new(Mutex::new(Slot {
                state: Some((cache.clone(), ids.clone())),
                last_generated: slot.last_generated.clone(),
                last_trace: slot.last_trace.clone(),
            }))),
            cancel: CancelHandle::new(),
        })
    }
}

/// Length of the longest common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
