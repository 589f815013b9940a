//! The engine: a loaded model with its tokenizer, what an application talks to.
//!
//! An [`Engine`] is immutable, `Send + Sync` and cheap to clone (model and tokenizer are
//! shared), and serves any number of generations at once: one-shot ones through
//! [`Engine::generate`], conversations through [`Engine::session`]. Generations running at the
//! same time on one engine (and its clones) decode together: their decode steps are batched
//! into one forward pass by the engine's scheduler.

use crate::chat_template::Message;
use crate::error::{Error, Result};
use crate::generate::{GenerateParams, Generation, Prompt};
use crate::model::{LoadOptions, Model, TokenizerSource};
use crate::scheduler::Scheduler;
use crate::session::Session;
use crate::tokenizer::Tokenizer;
use std::path::Path;
use std::sync::Arc;

/// A loaded model with its tokenizer.
#[derive(Debug, Clone)]
pub struct Engine {
    model: Model,
    tokenizer: Arc<Tokenizer>,
    /// Batches the decode steps of concurrent generations (see `scheduler.rs`).
    scheduler: Arc<Scheduler>,
}

impl Engine {
    /// Loads a checkpoint (a folder with the model, `tokenizer.json` and its configs, or one
    /// `.safetensors` file in such a folder) or a GGUF file (the tokenizer from its metadata).
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Engine> {
        let (model, source) = Model::load_with_tokenizer_source(path.as_ref(), options)?;
        let tokenizer = match source {
            TokenizerSource::Metadata(metadata) => Tokenizer::from_metadata(&metadata)?,
            TokenizerSource::Folder(dir) => Tokenizer::from_dir(&dir, &model.config().eos_token_ids)?,
        };
        crate::memory::release_free_heap();
        Engine::new(model, tokenizer)
    }

    /// An engine from a model and its tokenizer; fails when the tokenizer's end tokens are
    /// outside the model's vocabulary.
    pub fn new(model: Model, tokenizer: Tokenizer) -> Result<Engine> {
        let vocab = model.vocab_size();
        if let Some(&bad) = tokenizer.eos().iter().find(|&&e| e as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "end token {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        Ok(Engine {
            scheduler: Arc::new(Scheduler::new(model.clone())),
            model,
            tokenizer: Arc::new(tokenizer),
        })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The decode scheduler shared by this engine's generations.
    pub(crate) fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Renders `messages` with the model's chat template; `tools` are JSON schemas (JSON text).
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tools: &[String],
    ) -> Result<String> {
        let template = self
            .tokenizer
            .chat_template()
            .ok_or_else(|| Error::InvalidArgument("the model has no chat template".into()))?;
        template.render(messages, add_generation_prompt, tools)
    }

    /// The text a prompt becomes before tokenization (`None` for token prompts).
    pub fn prompt_text(&self, prompt: &Prompt) -> Result<Option<String>> {
        Ok(match prompt {
            Prompt::Chat(m) => Some(self.apply_chat_template(m, true, &[])?),
            Prompt::ChatWithTools(m, tools) => Some(self.apply_chat_template(m, true, tools)?),
            Prompt::Raw(t) => Some(t.clone()),
            Prompt::Tokens(_) => None,
        })
    }

    /// The token ids of a prompt.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match (prompt, self.prompt_text(prompt)?) {
            (Prompt::Tokens(ids), _) => Ok(ids.clone()),
            // The template writes the special tokens itself (BOS included).
            (Prompt::Raw(_), Some(text)) => self.tokenizer.encode(&text, true),
            (_, Some(text)) => self.tokenizer.encode(&text, false),
            (_, None) => Ok(vec![]),
        }
    }

    /// Starts a one-shot generation on a fresh cache. Nothing runs until the iterator is first
    /// advanced.
    pub fn generate(&self, prompt: &Prompt, params: &GenerateParams) -> Result<Generation> {
        let ids = self.prompt_ids(prompt)?;
        Generation::start(self.clone(), ids, params, self.model.new_cache(), None)
    }

    /// A new conversation on this engine (see [`Session`]).
    pub fn session(&self) -> Session {
        Session::new(self.clone())
    }
}
