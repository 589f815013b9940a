//! `r1py._r1`: the compiled half of the r1py wheel. Conversions, error mapping and iterators
//! over r1-core; the Python half (`python/r1py`) shapes them into the documented API.
//!
//! Compute runs with the GIL released (`Python::detach`). A generation polls for signals before
//! each token and between prefill chunks (through a `CancelHandle` poll), so Ctrl-C stops it
//! within a token's time and raises `KeyboardInterrupt`, leaving the model usable.

use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use r1_core::{
    CachePrecision, CancelHandle, Channel, Consensus, DType, DistillRecord, DistillWriter, Engine, Error,
    GenerateParams, Generation, LoadOptions, Message, Prompt, QuantizeTo, SamplingParams, Session, StepConfig,
    StepVerifier, Trace, Usage, Verdict,
};
use std::sync::{Arc, Mutex, MutexGuard};

/// An r1-core error as the Python exception of its code (classes in `r1py._errors`).
fn py_err(e: Error) -> PyErr {
    let name = match e.code().name() {
        "invalid_argument" => "InvalidArgument",
        "invalid_utf8" => "InvalidUtf8",
        "io" => "ModelNotFound",
        "format" => "FormatError",
        "unsupported" => "Unsupported",
        "context_full" => "ContextFull",
        "cancelled" => "Cancelled",
        "template" => "TemplateError",
        _ => "InternalError",
    };
    Python::attach(|py| {
        let class = py.import("r1py._errors").and_then(|m| m.getattr(name));
        match class.and_then(|c| c.call1((e.to_string(),))) {
            Ok(exc) => PyErr::from_value(exc),
            Err(import_failed) => import_failed,
        }
    })
}

fn closed() -> PyErr {
    py_err(Error::InvalidArgument("this object was closed".into()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Locks a generation's mutex from a thread that holds the GIL, without waiting for it with
/// the GIL held: a thread computing under that lock attaches to poll for signals.
fn lock_attached<'a, T>(py: Python<'_>, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        match m.try_lock() {
            Ok(g) => return g,
            Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => py.detach(std::thread::yield_now),
        }
    }
}

/// A loaded model (weights shared with its sessions and generations).
#[pyclass(module = "r1py._r1", name = "Model")]
struct PyModel {
    engine: Mutex<Option<Engine>>,
}

impl PyModel {
    fn engine(&self) -> PyResult<Engine> {
        lock(&self.engine).clone().ok_or_else(closed)
    }
}

/// Generation settings from keyword arguments; `None` keeps r1's default.
#[derive(Default)]
struct GenArgs {
    max_tokens: Option<usize>,
    greedy: Option<bool>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Vec<String>>,
    max_reasoning_tokens: Option<usize>,
    top_logprobs: Option<usize>,
    starts_in_reasoning: Option<bool>,
    verifier: Option<Arc<Py<PyAny>>>,
    max_step_retries: Option<usize>,
    step_separators: Option<Vec<String>>,
}

/// One optional entry of the settings dict, converted (a wrong type is a `TypeError` naming it).
fn item<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => match v.extract::<T>() {
            Ok(x) => Ok(Some(x)),
            Err(e) => {
                let e: PyErr = e.into();
                Err(PyTypeError::new_err(format!("{key}: {e}")))
            }
        },
        _ => Ok(None),
    }
}

impl GenArgs {
    fn from_dict(d: &Bound<'_, PyDict>) -> PyResult<GenArgs> {
        Ok(GenArgs {
            max_tokens: item(d, "max_tokens")?,
            greedy: item(d, "greedy")?,
            temperature: item(d, "temperature")?,
            top_p: item(d, "top_p")?,
            top_k: item(d, "top_k")?,
            min_p: item(d, "min_p")?,
            repetition_penalty: item(d, "repetition_penalty")?,
            presence_penalty: item(d, "presence_penalty")?,
            frequency_penalty: item(d, "frequency_penalty")?,
            seed: item(d, "seed")?,
            stop: item(d, "stop")?,
            max_reasoning_tokens: item(d, "max_reasoning_tokens")?,
            top_logprobs: item(d, "top_logprobs")?,
            starts_in_reasoning: item(d, "starts_in_reasoning")?,
            verifier: item::<Py<PyAny>>(d, "verifier")?.map(Arc::new),
            max_step_retries: item(d, "max_step_retries")?,
            step_separators: item(d, "step_separators")?,
        })
    }

    /// The settings; a Python verifier's exception is kept in `error` (which stops the
    /// generation through the signal poll) to be raised when the call returns.
    fn params(&self, error: &Arc<Mutex<Option<PyErr>>>) -> GenerateParams {
        let mut p = self.plain_params();
        if let Some(f) = &self.verifier {
            let (f, error) = (Arc::clone(f), Arc::clone(error));
            let mut steps = StepConfig::default();
            if let Some(seps) = &self.step_separators {
                steps.separators = seps.clone();
            }
            let v = StepVerifier::new(move |step, reasoning| py_verdict(&f, &error, step, reasoning));
            p.verifier = Some(v.with_max_retries(self.max_step_retries.unwrap_or(3)).with_steps(steps));
        }
        p
    }

    fn plain_params(&self) -> GenerateParams {
        let mut s = if self.greedy == Some(true) {
            SamplingParams::greedy()
        } else {
            SamplingParams::deepseek_r1()
        };
        if let Some(t) = self.temperature {
            s = s.with_temperature(t);
        }
        if let Some(p) = self.top_p {
            s = s.with_top_p(p);
        }
        if let Some(k) = self.top_k {
            s = s.with_top_k(k);
        }
        if let Some(p) = self.min_p {
            s = s.with_min_p(p);
        }
        if let Some(seed) = self.seed {
            s = s.with_seed(seed);
        }
        s = s.with_penalties(
            self.repetition_penalty.unwrap_or(1.0),
            self.presence_penalty.unwrap_or(0.0),
            self.frequency_penalty.unwrap_or(0.0),
        );
        let mut p = GenerateParams::default().with_sampling(s);
        if let Some(n) = self.max_tokens {
            p = p.with_max_tokens(n);
        }
        if let Some(stop) = &self.stop {
            p = p.with_stop(stop.clone());
        }
        p.max_reasoning_tokens = self.max_reasoning_tokens;
        p.top_logprobs = self.top_logprobs;
        p.starts_in_reasoning = self.starts_in_reasoning;
        p
    }
}

/// Calls a Python verifier: `True`/`"accept"`/`None` accept, `False`/`"reject"` reject,
/// `"stop"` stops. An exception (or another answer) is kept in `error` and the step accepted;
/// the generation then stops and the call raises it.
fn py_verdict(f: &Py<PyAny>, error: &Mutex<Option<PyErr>>, step: &str, reasoning: &str) -> Verdict {
    if lock(error).is_some() {
        return Verdict::Accept;
    }
    let verdict = Python::attach(|py| -> PyResult<Verdict> {
        let v = f.call1(py, (step, reasoning))?;
        let v = v.bind(py);
        if v.is_none() {
            return Ok(Verdict::Accept);
        }
        if let Ok(b) = v.extract::<bool>() {
            return Ok(if b { Verdict::Accept } else { Verdict::Reject });
        }
        match v.extract::<String>().as_deref() {
            Ok("accept") => Ok(Verdict::Accept),
            Ok("reject") => Ok(Verdict::Reject),
            Ok("stop") => Ok(Verdict::Stop),
            _ => Err(PyTypeError::new_err(format!(
                "a verifier returns True, False, None, \"accept\", \"reject\" or \"stop\", not {v}"
            ))),
        }
    });
    verdict.unwrap_or_else(|e| {
        *lock(error) = Some(e);
        Verdict::Accept
    })
}

/// The prompt's text for a distillation record, rendered only when the generation will have
/// one (with `top_logprobs`); empty otherwise.
fn record_text(e: &Engine, p: &Prompt, args: &GenArgs) -> PyResult<String> {
    match args.top_logprobs {
        Some(_) => Ok(e.prompt_text(p).map_err(py_err)?.unwrap_or_default()),
        None => Ok(String::new()),
    }
}

fn to_messages(msgs: Vec<(String, String)>) -> Vec<Message> {
    msgs.iter().map(|(r, c)| Message::new(r, c)).collect()
}

fn prompt(kind: &str, messages: Vec<(String, String)>, text: String, tools: Vec<String>) -> PyResult<Prompt> {
    Ok(match kind {
        "chat" if tools.is_empty() => Prompt::Chat(to_messages(messages)),
        "chat" => Prompt::ChatWithTools(to_messages(messages), tools),
        "complete" => Prompt::Raw(text),
        other => return Err(PyTypeError::new_err(format!("unknown prompt kind {other}"))),
    })
}

/// A poll for pending signals (Ctrl-C), run from the computing thread: it attaches to the
/// interpreter for a moment; a raised signal is kept to re-raise and stops the generation.
fn signal_poll(slot: Arc<Mutex<Option<PyErr>>>) -> CancelHandle {
    CancelHandle::with_poll(move || {
        if lock(&slot).is_some() {
            return true;
        }
        match Python::attach(|py| py.check_signals()) {
            Ok(()) => false,
            Err(e) => {
                *lock(&slot) = Some(e);
                true
            }
        }
    })
}

#[pymethods]
impl PyModel {
    #[new]
    #[pyo3(signature = (path, dtype=None, threads=None, quantize=None, cache=None))]
    fn new(
        py: Python<'_>,
        path: String,
        dtype: Option<String>,
        threads: Option<usize>,
        quantize: Option<String>,
        cache: Option<String>,
    ) -> PyResult<Self> {
        let mut options = LoadOptions::default();
        if let Some(d) = dtype {
            options = options.with_dtype(d.parse::<DType>().map_err(py_err)?);
        }
        if let Some(q) = quantize {
            let q: QuantizeTo = q.parse().map_err(|e: String| py_err(Error::InvalidArgument(e)))?;
            options = options.with_quantize(Some(q));
        }
        if let Some(t) = threads {
            options = options.with_threads(t);
        }
        if let Some(c) = cache {
            options = options.with_cache_precision(c.parse::<CachePrecision>().map_err(py_err)?);
        }
        let engine = py.detach(|| Engine::load(&path, &options)).map_err(py_err)?;
        Ok(PyModel {
            engine: Mutex::new(Some(engine)),
        })
    }

    /// Frees this handle's reference to the weights (sessions keep their own).
    fn close(&self) {
        *lock(&self.engine) = None;
    }

    #[getter]
    fn closed(&self) -> bool {
        lock(&self.engine).is_none()
    }

    #[getter]
    fn vocab_size(&self) -> PyResult<usize> {
        Ok(self.engine()?.model().vocab_size())
    }

    #[getter]
    fn context_length(&self) -> PyResult<usize> {
        Ok(self.engine()?.model().context_length())
    }

    #[getter]
    fn architecture(&self) -> PyResult<&'static str> {
        Ok(self.engine()?.model().architecture().name())
    }

    #[pyo3(signature = (text, add_special=true))]
    fn tokenize(&self, py: Python<'_>, text: String, add_special: bool) -> PyResult<Vec<u32>> {
        let e = self.engine()?;
        py.detach(|| e.tokenizer().encode(&text, add_special)).map_err(py_err)
    }

    fn detokenize(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<String> {
        let e = self.engine()?;
        let vocab = e.model().vocab_size();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(py_err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            ))));
        }
        py.detach(|| e.tokenizer().decode(&ids, false)).map_err(py_err)
    }

    #[pyo3(signature = (messages, add_generation_prompt=true, tools=vec![]))]
    fn apply_chat_template(
        &self,
        messages: Vec<(String, String)>,
        add_generation_prompt: bool,
        tools: Vec<String>,
    ) -> PyResult<String> {
        let e = self.engine()?;
        e.apply_chat_template(&to_messages(messages), add_generation_prompt, &tools)
            .map_err(py_err)
    }

    /// Logits of every position of `ids` from a fresh cache: float32 `(len(ids), vocab)`.
    fn logits<'py>(&self, py: Python<'py>, ids: Vec<u32>) -> PyResult<Bound<'py, PyAny>> {
        let e = self.engine()?;
        let logits = py.detach(|| e.model().logits(&ids)).map_err(py_err)?;
        let (rows, vocab) = logits.shape();
        let array = PyArray1::from_vec(py, logits.into_vec());
        Ok(array.reshape([rows, vocab])?.into_any())
    }

    /// Starts a one-shot generation on a fresh cache.
    #[pyo3(signature = (kind, messages, text, tools, args))]
    fn generate(
        &self,
        kind: &str,
        messages: Vec<(String, String)>,
        text: String,
        tools: Vec<String>,
        args: &Bound<'_, PyDict>,
    ) -> PyResult<PyGeneration> {
        let args = GenArgs::from_dict(args)?;
        let e = self.engine()?;
        let p = prompt(kind, messages, text, tools)?;
        let prompt_text = record_text(&e, &p, &args)?;
        PyGeneration::start(|params| e.generate(&p, params), &args, prompt_text)
    }

    /// Several prompts generated together, batched (GIL released; Ctrl-C polled): one result
    /// dict and dataset record (or `None`) per prompt, in order. `prompts` are message lists
    /// (`kind` "chat") or texts ("complete").
    #[pyo3(signature = (kind, conversations, texts, args))]
    fn generate_batch(
        &self,
        py: Python<'_>,
        kind: &str,
        conversations: Vec<Vec<(String, String)>>,
        texts: Vec<String>,
        args: &Bound<'_, PyDict>,
    ) -> PyResult<Vec<(Py<PyDict>, Option<PyRecord>)>> {
        let gen_args = GenArgs::from_dict(args)?;
        let e = self.engine()?;
        let prompts = match kind {
            "chat" => conversations
                .into_iter()
                .map(|m| prompt("chat", m, String::new(), vec![]))
                .collect::<PyResult<Vec<_>>>()?,
            _ => texts
                .into_iter()
                .map(|t| prompt("complete", vec![], t, vec![]))
                .collect::<PyResult<Vec<_>>>()?,
        };
        let interrupt = Arc::new(Mutex::new(None));
        let params = gen_args
            .params(&interrupt)
            .with_cancel(signal_poll(Arc::clone(&interrupt)));
        let texts = prompts
            .iter()
            .map(|p| record_text(&e, p, &gen_args))
            .collect::<PyResult<Vec<_>>>()?;
        let requests: Vec<(Prompt, GenerateParams)> = prompts.into_iter().map(|p| (p, params.clone())).collect();
        let done = py.detach(|| e.generate_batch(&requests, |_, _| {}));
        if let Some(err) = lock(&interrupt).take() {
            return Err(err);
        }
        let done = done.map_err(py_err)?;
        let mut out = Vec::with_capacity(done.len());
        for (g, text) in done.into_iter().zip(texts) {
            let generation = PyGeneration {
                generation: Mutex::new(Some(g)),
                cancel: CancelHandle::new(),
                interrupt: Arc::new(Mutex::new(None)),
                wants_logprobs: gen_args.top_logprobs.is_some(),
                prompt_text: text,
            };
            out.push((generation.result(py)?.unbind(), generation.record(py)?));
        }
        Ok(out)
    }

    /// `args["n"]` samples and their vote (GIL released; Ctrl-C polled).
    #[pyo3(signature = (kind, messages, text, tools, args))]
    fn self_consistency(
        &self,
        py: Python<'_>,
        kind: &str,
        messages: Vec<(String, String)>,
        text: String,
        tools: Vec<String>,
        args: &Bound<'_, PyDict>,
    ) -> PyResult<PyConsensus> {
        let n: usize = item(args, "n")?.ok_or_else(|| PyTypeError::new_err("n: the number of samples"))?;
        let args = GenArgs::from_dict(args)?;
        let e = self.engine()?;
        let p = prompt(kind, messages, text, tools)?;
        let prompt_text = record_text(&e, &p, &args)?;
        let interrupt = Arc::new(Mutex::new(None));
        let params = args.params(&interrupt).with_cancel(signal_poll(Arc::clone(&interrupt)));
        let result = py.detach(|| e.self_consistency(&p, &params, n));
        if let Some(err) = lock(&interrupt).take() {
            return Err(err);
        }
        Ok(PyConsensus {
            consensus: result.map_err(py_err)?,
            prompt_text,
            wants_logprobs: args.top_logprobs.is_some(),
        })
    }

    fn session(&self) -> PyResult<PySession> {
        Ok(PySession {
            session: Mutex::new(Some(self.engine()?.session())),
        })
    }
}

/// A conversation whose cache outlives each generation.
#[pyclass(module = "r1py._r1", name = "Session")]
struct PySession {
    session: Mutex<Option<Session>>,
}

#[pymethods]
impl PySession {
    #[pyo3(signature = (kind, messages, text, tools, args))]
    fn generate(
        &self,
        kind: &str,
        messages: Vec<(String, String)>,
        text: String,
        tools: Vec<String>,
        args: &Bound<'_, PyDict>,
    ) -> PyResult<PyGeneration> {
        let args = GenArgs::from_dict(args)?;
        let p = prompt(kind, messages, text, tools)?;
        let mut guard = lock(&self.session);
        let session = guard.as_mut().ok_or_else(closed)?;
        let prompt_text = record_text(session.engine(), &p, &args)?;
        PyGeneration::start(|params| session.generate(&p, params), &args, prompt_text)
    }

    fn reset(&self) -> PyResult<()> {
        lock(&self.session).as_mut().ok_or_else(closed)?.reset().map_err(py_err)
    }

    fn close(&self) {
        *lock(&self.session) = None;
    }

    #[getter]
    fn closed(&self) -> bool {
        lock(&self.session).is_none()
    }

    fn cached_ids(&self) -> PyResult<Vec<u32>> {
        lock(&self.session)
            .as_ref()
            .ok_or_else(closed)?
            .cached_ids()
            .map_err(py_err)
    }
}

/// A running generation. `next_event()` runs one step with the GIL released.
#[pyclass(module = "r1py._r1", name = "Generation")]
struct PyGeneration {
    generation: Mutex<Option<Generation>>,
    cancel: CancelHandle,
    interrupt: Arc<Mutex<Option<PyErr>>>,
    wants_logprobs: bool,
    /// The prompt's text, for a distillation record.
    prompt_text: String,
}

impl PyGeneration {
    fn start(
        begin: impl FnOnce(&GenerateParams) -> r1_core::Result<Generation>,
        args: &GenArgs,
        prompt_text: String,
    ) -> PyResult<PyGeneration> {
        let interrupt = Arc::new(Mutex::new(None));
        // One handle: `cancel()` sets its flag, and its poll notices Ctrl-C (and a verifier's
        // exception).
        let cancel = signal_poll(Arc::clone(&interrupt));
        let params = args.params(&interrupt).with_cancel(cancel.clone());
        let generation = begin(&params).map_err(py_err)?;
        Ok(PyGeneration {
            generation: Mutex::new(Some(generation)),
            cancel,
            interrupt,
            wants_logprobs: args.top_logprobs.is_some(),
            prompt_text,
        })
    }

    /// Re-raises a signal caught while computing.
    fn take_interrupt(&self, py: Python<'_>) -> PyResult<()> {
        match lock(&self.interrupt).take() {
            Some(e) => {
                // The generation was stopped by it: drop it so a session gets its cache back.
                lock_attached(py, &self.generation).take();
                Err(e)
            }
            None => Ok(()),
        }
    }
}

fn channel_name(c: Channel) -> &'static str {
    if c == Channel::Reasoning {
        "reasoning"
    } else {
        "answer"
    }
}

#[pymethods]
impl PyGeneration {
    /// The next event as `(channel, text, token_id or None)`, or `None` at the end.
    fn next_event(&self, py: Python<'_>) -> PyResult<Option<(&'static str, String, Option<u32>)>> {
        let step = py.detach(|| {
            let mut guard = lock(&self.generation);
            guard.as_mut().map(|g| g.next())
        });
        self.take_interrupt(py)?;
        match step {
            None | Some(None) => Ok(None),
            Some(Some(Err(e))) => Err(py_err(e)),
            Some(Some(Ok(ev))) => Ok(Some((channel_name(ev.channel), ev.text, ev.token))),
        }
    }

    /// Runs to the end (GIL released, signals polled per token and prefill chunk).
    fn run(&self, py: Python<'_>) -> PyResult<()> {
        let failed = py.detach(|| {
            let mut guard = lock(&self.generation);
            let g = guard.as_mut()?;
            g.by_ref().find_map(|ev| ev.err())
        });
        self.take_interrupt(py)?;
        match failed {
            Some(e) => Err(py_err(e)),
            None => Ok(()),
        }
    }

    /// Stops the generation at its next step (any thread).
    fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Everything about the generation so far, as a dict (final once it ended).
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let guard = lock_attached(py, &self.generation);
        let g = guard.as_ref().ok_or_else(closed)?;
        let d = PyDict::new(py);
        d.set_item("usage", usage_dict(py, &g.usage())?)?;
        d.set_item("prompt_ids", g.prompt_ids().to_vec())?;
        d.set_item("token_ids", g.generated_ids().to_vec())?;
        d.set_item("done", g.is_done())?;
        d.set_item("finish_reason", g.finish_reason().map(|r| r.name()))?;
        d.set_item("trace", g.trace().map(|t| trace_dict(py, t)).transpose()?)?;
        d.set_item("text", g.text())?;
        if self.wants_logprobs {
            d.set_item("logprobs", logprobs_list(py, g.logprobs())?)?;
        }
        let steps = PyList::empty(py);
        for s in g.steps() {
            let e = PyDict::new(py);
            e.set_item("text", &s.text)?;
            e.set_item("tries", s.tries)?;
            e.set_item("verdicts", s.verdicts.iter().map(|v| v.name()).collect::<Vec<_>>())?;
            e.set_item("retries_exhausted", s.retries_exhausted)?;
            e.set_item("first_token", s.first_token)?;
            steps.append(e)?;
        }
        d.set_item("verified_steps", steps)?;
        Ok(d)
    }

    /// The finished generation as a dataset record (`None` without `top_logprobs`).
    fn record(&self, py: Python<'_>) -> PyResult<Option<PyRecord>> {
        let guard = lock_attached(py, &self.generation);
        let g = guard.as_ref().ok_or_else(closed)?;
        if !self.wants_logprobs {
            return Ok(None);
        }
        let record = DistillRecord::from_generation(&self.prompt_text, g).map_err(py_err)?;
        Ok(Some(PyRecord { record }))
    }
}

/// One generation as a distillation dataset holds it.
#[pyclass(module = "r1py._r1", name = "Record")]
struct PyRecord {
    record: DistillRecord,
}

fn usage_dict<'py>(py: Python<'py>, usage: &Usage) -> PyResult<Bound<'py, PyDict>> {
    let u = PyDict::new(py);
    u.set_item("prompt_tokens", usage.prompt_tokens)?;
    u.set_item("cached_prompt_tokens", usage.cached_prompt_tokens)?;
    u.set_item("reasoning_tokens", usage.reasoning_tokens)?;
    u.set_item("answer_tokens", usage.answer_tokens)?;
    u.set_item("rejected_steps", usage.rejected_steps)?;
    u.set_item("prefill_tokens_per_s", usage.prefill_tokens_per_s)?;
    u.set_item("decode_tokens_per_s", usage.decode_tokens_per_s)?;
    u.set_item("reasoning_budget_hit", usage.reasoning_budget_hit)?;
    Ok(u)
}

fn logprobs_list<'py>(py: Python<'py>, logprobs: &[r1_core::TokenLogprobs]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for t in logprobs {
        let e = PyDict::new(py);
        e.set_item("token", t.token)?;
        e.set_item("logprob", t.logprob)?;
        e.set_item("top", t.top.clone())?;
        list.append(e)?;
    }
    Ok(list)
}

/// The samples of a self-consistency run and their vote.
#[pyclass(module = "r1py._r1", name = "Consensus")]
struct PyConsensus {
    consensus: Consensus,
    prompt_text: String,
    wants_logprobs: bool,
}

#[pymethods]
impl PyConsensus {
    /// `{"prompt_ids", "samples": [result dicts, as a generation's, plus "seed"], "vote":
    /// {"answer", "counts": [(answer, votes)]}}`.
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.consensus;
        let samples = PyList::empty(py);
        for s in &c.samples {
            let d = PyDict::new(py);
            d.set_item("seed", s.seed)?;
            d.set_item("usage", usage_dict(py, &s.usage)?)?;
            d.set_item("prompt_ids", c.prompt_ids.clone())?;
            d.set_item("token_ids", s.generated_ids.clone())?;
            d.set_item("finish_reason", s.finish_reason.name())?;
            d.set_item("trace", trace_dict(py, &s.trace)?)?;
            d.set_item("text", &s.text)?;
            d.set_item("voted_answer", s.final_answer.clone())?;
            if self.wants_logprobs {
                d.set_item("logprobs", logprobs_list(py, &s.logprobs)?)?;
            }
            samples.append(d)?;
        }
        let vote = PyDict::new(py);
        vote.set_item("answer", c.vote.answer.clone())?;
        vote.set_item("counts", c.vote.counts.clone())?;
        let d = PyDict::new(py);
        d.set_item("prompt_ids", c.prompt_ids.clone())?;
        d.set_item("samples", samples)?;
        d.set_item("vote", vote)?;
        Ok(d)
    }

    /// Sample `i` as a dataset record (`None` without `top_logprobs`).
    fn record(&self, i: usize) -> PyResult<Option<PyRecord>> {
        if !self.wants_logprobs {
            return Ok(None);
        }
        let record = DistillRecord::from_sample(&self.prompt_text, &self.consensus, i).map_err(py_err)?;
        Ok(Some(PyRecord { record }))
    }
}

/// A distillation dataset being written.
#[pyclass(module = "r1py._r1", name = "DistillWriter")]
struct PyDistillWriter {
    writer: Mutex<Option<DistillWriter>>,
}

impl PyDistillWriter {
    fn with<T>(&self, f: impl FnOnce(&mut DistillWriter) -> r1_core::Result<T>) -> PyResult<T> {
        let mut guard = lock(&self.writer);
        f(guard.as_mut().ok_or_else(closed)?).map_err(py_err)
    }
}

#[pymethods]
impl PyDistillWriter {
    #[new]
    fn new(path: String, top_k: usize) -> PyResult<Self> {
        Ok(PyDistillWriter {
            writer: Mutex::new(Some(DistillWriter::create(path, top_k).map_err(py_err)?)),
        })
    }

    fn contains(&self, prompt_text: &str) -> PyResult<bool> {
        self.with(|w| Ok(w.contains(prompt_text)))
    }

    fn __len__(&self) -> PyResult<usize> {
        self.with(|w| Ok(w.len()))
    }

    /// Appends a record.
    fn write(&self, record: PyRef<'_, PyRecord>) -> PyResult<()> {
        self.with(|w| w.write(&record.record))
    }

    /// Writes what is buffered and closes the dataset.
    fn close(&self) -> PyResult<()> {
        match lock(&self.writer).take() {
            Some(w) => w.finish().map_err(py_err),
            None => Ok(()),
        }
    }
}

fn trace_dict<'py>(py: Python<'py>, t: &Trace) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("reasoning", &t.reasoning)?;
    d.set_item("answer", &t.answer)?;
    d.set_item("truncated", t.truncated)?;
    d.set_item("steps", t.steps.iter().map(|s| s.text.clone()).collect::<Vec<_>>())?;
    d.set_item("final_answer", t.final_answer.clone())?;
    let calls: Vec<(String, String, bool)> = t
        .tool_calls
        .iter()
        .map(|c| (c.name.clone(), c.arguments.clone(), c.valid_json))
        .collect();
    d.set_item("tool_calls", calls)?;
    d.set_item("errors", t.errors.clone())?;
    Ok(d)
}

/// Parses recorded output into a trace dict.
#[pyfunction]
#[pyo3(signature = (text, starts_in_reasoning=false))]
fn parse_trace<'py>(py: Python<'py>, text: &str, starts_in_reasoning: bool) -> PyResult<Bound<'py, PyDict>> {
    trace_dict(py, &Trace::parse(text, starts_in_reasoning))
}

#[pymodule]
fn _r1(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_class::<PySession>()?;
    m.add_class::<PyGeneration>()?;
    m.add_class::<PyConsensus>()?;
    m.add_class::<PyDistillWriter>()?;
    m.add_class::<PyRecord>()?;
    m.add_function(wrap_pyfunction!(parse_trace, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
