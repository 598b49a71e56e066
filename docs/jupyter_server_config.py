# jupyter_server_config.py: every setting of the lemonade_jupyter server extension, with its
# default. Put the lines you change in ~/.jupyter/jupyter_server_config.py (or the file that
# `jupyter --paths` lists first under "config"). A bad value stops the server's start with a
# TraitError naming the setting. The settings marked "runtime" can also be changed while the
# server runs: `%lemonade config key=value` or POST lemonade/internal/set.
c = get_config()  # noqa: F821 - provided by Jupyter when it reads this file

# -- where things are ---------------------------------------------------------------------------
# llama-server to run; empty: $LEMONADE_LLAMA_SERVER, PATH, the native build cached by
# `lemonade-jupyter install-llama-server`, then the prebuilt engine.
c.LemonadeApp.llama_server_path = ""
# Pins, the loaded set, runtime settings and user models (default: <jupyter data dir>/lemonade).
# c.LemonadeApp.data_dir = "/path/to/lemonade-data"

# -- slots and pins -----------------------------------------------------------------------------
# Models kept loaded per type (llm, embedding, reranking...); -1: no limit. (runtime)
c.LemonadeApp.max_loaded_models = 1
# Reload the models that were loaded, pinned ones first, when the server starts. (runtime)
c.LemonadeApp.restore_on_start = True
# Requests that may wait for a model whose parallel slots are all busy before a 429 with
# Retry-After; -1: no bound. The load option max_queue overrides it per model. (runtime)
c.LemonadeApp.max_queue = -1

# -- the eviction engine (opt-in) ----------------------------------------------------------------
# Let the engine downsize and unload idle unpinned models. (runtime)
c.LemonadeApp.auto_evict = False
# Memory pressure (used fraction of the fullest device) at which one model is evicted. (runtime)
c.LemonadeApp.auto_evict_threshold_pct = 0.9
# Seconds idle before a model is downsized (backend stopped, slot kept). (runtime)
c.LemonadeApp.downsize_idle_timeout = 60.0
# Seconds idle before a model is unloaded. (runtime)
c.LemonadeApp.evict_idle_timeout = 300.0
# Divides a model's score under pressure: a larger weight protects it. (runtime)
c.LemonadeApp.evict_weight_factor = 1.0
# Seconds between the engine's rounds while auto-eviction is on. (runtime)
c.LemonadeApp.eviction_interval_s = 5.0
# Seconds between a decision and its commit; a model used meanwhile is spared. (runtime)
c.LemonadeApp.eviction_grace_s = 0.25

# -- memory -------------------------------------------------------------------------------------
# Seconds between memory samples while someone needs them (a dashboard, auto-eviction). (runtime)
c.LemonadeApp.memory_sample_interval_s = 2.0
# System memory (MiB) the models on the CPU may hold together; 0: no budget. (runtime)
c.LemonadeApp.memory_budget_mib = 0
# GPU memory (MiB) kept free on each device when admitting a model by fit.
c.LemonadeApp.gpu_memory_reserve_mib = 512.0

# -- backends: start, stop, crashes, hangs ------------------------------------------------------
# --threads of each llama-server; 0 lets llama.cpp use every core. Left unset, it is
# $LEMONADE_BACKEND_THREADS when that is set, else 0.
# c.LemonadeApp.backend_threads = 0
# Single-user escape hatch: let llamacpp_args pass any llama-server flag, files and programs
# included (never where others can load models); the router's own flags stay refused.
c.LemonadeApp.allow_any_llamacpp_args = False
# Seconds a backend may take to answer its /health.
c.LemonadeApp.ready_timeout_s = 120.0
# Seconds between SIGTERM and SIGKILL when a backend stops.
c.LemonadeApp.stop_grace_s = 5.0
# Failed starts or early deaths within the window that start a cooldown.
c.LemonadeApp.crash_loop_threshold = 2
c.LemonadeApp.crash_loop_window_s = 60.0
# First cooldown of a crash-looping model, doubling up to the cap.
c.LemonadeApp.crash_cooldown_s = 5.0
c.LemonadeApp.crash_cooldown_max_s = 300.0
# Liveness probes: every interval, each with a timeout; a backend that fails this many in a row
# is killed (and takes the crash path).
c.LemonadeApp.watchdog_interval_s = 2.0
c.LemonadeApp.watchdog_probe_timeout_s = 3.0
c.LemonadeApp.watchdog_probe_failures = 3
# Size cap (MiB) of each backend's log file (private, in <data_dir>/backend-logs): the
# start-up lines and the newest lines are kept, the middle is cut. (runtime)
c.LemonadeApp.backend_log_max_mib = 64
# Tokens llama.cpp's own completion and infill routes generate at most when a request sets
# neither n_predict nor max_tokens; -1: no cap. (runtime)
c.LemonadeApp.default_n_predict = 2048

# -- remote models (recipe "remote": vLLM, KServe, TGI, Ray Serve, another lemonade) ------------
# PEM file of the CA certificates to trust for https upstreams; empty: the system's store.
# Certificates are always verified.
c.LemonadeApp.remote_ca_bundle = ""
# Seconds to connect to a replica (and the timeout of a probe).
c.LemonadeApp.remote_connect_timeout_s = 5.0
# Seconds a replica may stay silent during a request before a 504.
c.LemonadeApp.remote_timeout_s = 300.0
# Probes (GET /models) of a replica that answers, and the cap of the back-off of one that is down.
c.LemonadeApp.remote_probe_interval_s = 10.0
c.LemonadeApp.remote_probe_backoff_max_s = 30.0
# Hosts a remote model may point at (names, IP addresses, networks like "10.0.0.0/8"); empty:
# any host but this Jupyter server itself (its port on localhost, 127.x, [::1], 0.0.0.0, this
# machine's addresses and hostname). An entry also lifts that refusal for its host.
c.LemonadeApp.remote_allowed_hosts = []
# Hosts a remote model may never point at, whatever remote_allowed_hosts says.
c.LemonadeApp.remote_denied_hosts = []
# Environment variables a remote model may name as its api_key_env ("PREFIX*": every name that
# starts with PREFIX). The server's own credentials (JUPYTER*, JUPYTERHUB_*, JPY_*, HF_*...) are
# never lent, even if listed here.
c.LemonadeApp.remote_key_envs = ["LEMONADE_REMOTE_KEY_*"]
# Total deadline of one request to a remote model (streams included), the size cap of an
# answer that is not streamed, and how many models one pull may register from a list.
c.LemonadeApp.remote_total_timeout_s = 600.0
c.LemonadeApp.remote_max_answer_mib = 64.0
c.LemonadeApp.remote_max_models_per_upstream = 256

# -- the audio routes (api/v1/audio/transcriptions and translations) ---------------------------
# Size cap (MiB) of one upload (larger: 413 audio_too_large) and the longest audio (seconds)
# one request transcribes (longer: 400 audio_too_long).
c.LemonadeApp.max_audio_upload_mib = 25.0
c.LemonadeApp.max_audio_seconds = 1800.0

# -- node mode: one router for every user of a JupyterHub (docs/jupyterhub.md) -----------------
# Set by `lemonade-jupyter node` (the Hub-managed service); a single-user server leaves it off.
c.LemonadeApp.node_mode = False
# Folders whose GGUF files any user may register by local path; a file elsewhere needs
# custom:lemonade:admin. Ignored by a single-user server.
c.LemonadeApp.node_model_folders = []
# Quotas of one user (admins too, for their own pins); -1: no limit. Runtime settings.
# Models one user may pin, and the memory (MiB) their pinned models may hold together: a pin
# beyond either is refused with 409 quota_exceeded.
c.LemonadeApp.node_max_pins_per_user = 2
c.LemonadeApp.node_max_pinned_mib_per_user = -1
# Inference requests one user may have in flight; one more gets 429 with Retry-After.
c.LemonadeApp.node_max_requests_per_user = 8

# -- the HTTP side ------------------------------------------------------------------------------
# Seconds of silence on a proxied stream (cold load, long prompt) before a ": ping" comment.
c.LemonadeApp.sse_ping_interval_s = 2.0
# A streaming chat request that waits for a cold load first gets the load's progress as
# reasoning_content chunks (chat UIs show it as the model thinking).
c.LemonadeApp.stream_loading_state = False
# Jupyter's own /metrics (which also carries the lemonade_* series) wants a login by default.
c.ServerApp.authenticate_prometheus = True
