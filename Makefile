# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, install the CPU build of torch and the pinned project, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.trl-opd-installed
PYTEST_ARGS ?=

.PHONY: bootstrap demo lab test lint bench clean package-check

bootstrap: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_CPU)"
	$(PIP) install --quiet -e ".[dev,eval]"
	# DeepSpeed for the two-process ZeRO-3 tests (its CPU accelerator over gloo); built against the torch above,
	# without its compiled ops (a build in an isolated env would download a CUDA torch)
	DS_BUILD_OPS=0 $(PIP) install --quiet --no-build-isolation "deepspeed==0.19.8"
	$(PY) -m trl_opd.eval.offline --prepare
	touch $(STAMP)

demo: bootstrap
	$(VENV)/bin/trl-opd demo --output-dir demo_output

# The sweeps whose results are committed under benchmarks/results (each file is headed by its exact command).
# About 10.2 h on 2 CPU cores in all (`--jobs 2` runs two (method, seed) pairs at once). The first lines run the lab's
# default schedule (linear decay: benchmarks/results/linear/ and the ablations' linear/ folders); the others made their
# files while the default was a constant rate, and say so.
LAB_SEEDS ?= 0,1,2
LAB_STEPS ?= 200
LAB := $(VENV)/bin/trl-opd lab --seeds $(LAB_SEEDS) --steps $(LAB_STEPS) --output-dir benchmarks/results

lab: bootstrap
	$(LAB) --output-dir benchmarks/results/linear --seeds 0,1,2,3,4 --world long-chains --methods opd,gkd,sft,motab --jobs 2
	$(LAB) --output-dir benchmarks/results/linear --seeds 0,1,2,3,4 --world arith --methods opd,gkd,sft,motab,grpo,rlsd,egrsd,cl-egrsd,opsd --jobs 2
	$(LAB) --output-dir benchmarks/results/linear --world ambiguous --methods grpo,rlsd,egrsd,cl-egrsd,opsd,sft --jobs 2
	$(LAB) --output-dir benchmarks/results/linear --world ambiguous-long --methods grpo,rlsd,egrsd,step-oracle:epsilon_w=1.0,step-oracle:right_rollouts=true,sft --jobs 2
	$(LAB) --output-dir benchmarks/results/linear --world ambiguous-noreader --methods grpo,rlsd,egrsd,cl-egrsd,egrsd:self_teacher_check=warn,opsd,sft --jobs 2
	$(LAB) --output-dir benchmarks/results/linear --world ambiguous-reader --methods grpo,rlsd,egrsd,sft --jobs 2
	$(LAB) --output-dir benchmarks/results/linear --world privileged-cold --methods opsd,atesd,atesd:teacher_collapse_logp=-6.9,atesd:collapse_repair=false:teacher_collapse_logp=-6.9,atesd:alpha_prior_mean=null:teacher_collapse_logp=-6.9,opsd:teacher_collapse_logp=-6.9,opsd:teacher_collapse_logp=-6.9:collapse_repair=true,opsd:teacher_collapse_logp=-0.69:collapse_repair=true,grpo,rlsd,egrsd,egrsd:weight_normalization=rollout,sft --jobs 2
	$(LAB) --output-dir benchmarks/results/linear --world mismatch --methods opd,gkd,sft,tropd,opd:teacher_collapse_logp=-6.9:collapse_repair=true --jobs 2
	$(LAB) --output-dir benchmarks/results/linear --world privileged --methods opsd,atesd,opsd:teacher_collapse_logp=-0.69:collapse_repair=true,grpo,egrsd,sft --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-options/linear --world ambiguous --methods grpo,rlsd,egrsd,rlsd:teacher_rollouts=penalized,egrsd:teacher_rollouts=penalized,cl-egrsd:teacher_rollouts=penalized,rlsd:epsilon_w=1.0:teacher_rollouts=penalized,egrsd:epsilon_w=1.0:teacher_rollouts=penalized,egrsd:epsilon_w=1.0,egrsd:gate_tau=mean,egrsd:weight_normalization=rollout --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-options/linear --world ambiguous-long --methods grpo,cl-egrsd,egrsd:teacher_rollouts=penalized,egrsd:delta_centering=mean,rlsd:teacher_rollouts=penalized --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/step-oracle/linear --world ambiguous --methods grpo,rlsd,step-oracle,step-oracle:epsilon_w=1.0,step-oracle:blame=first:epsilon_w=1.0,step-oracle:right_rollouts=true,step-oracle:right_rollouts=true:epsilon_w=1.0 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-trust/linear --world ambiguous-long --methods grpo,rlsd,egrsd,rlsd:magnitude_trust=rank,egrsd:magnitude_trust=rank,cl-egrsd:magnitude_trust=rank --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-trust/linear --world ambiguous --methods grpo,rlsd,egrsd,rlsd:magnitude_trust=rank,egrsd:magnitude_trust=rank,cl-egrsd:magnitude_trust=rank --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-trust/linear --world privileged --methods grpo,rlsd,egrsd,rlsd:magnitude_trust=rank,egrsd:magnitude_trust=rank,cl-egrsd:magnitude_trust=rank --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-trust/linear --world ambiguous-noreader --methods grpo,rlsd,egrsd:self_teacher_check=warn,rlsd:magnitude_trust=rank,egrsd:self_teacher_check=warn:magnitude_trust=rank --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-trust/linear --seeds 0,1,2,3,4 --world arith --methods grpo,rlsd,egrsd:self_teacher_check=warn,rlsd:magnitude_trust=rank,egrsd:self_teacher_check=warn:magnitude_trust=rank --jobs 2
	$(LAB) --lr-schedule constant --world arith --methods opd,gkd,sft,motab,tropd,tropd:trust_region_loss=divergence,opd:teacher_collapse_logp=-6.9:collapse_repair=true,opd:divergence=k1,grpo,rlsd,egrsd,cl-egrsd,egrsd:self_teacher_check=warn,opsd,atesd,atesd:teacher_collapse_logp=-6.9 --jobs 2
	$(LAB) --lr-schedule constant --world long-chains --methods opd,gkd,sft,motab,motab:train_on_strayed=true --jobs 2
	$(LAB) --lr-schedule constant --world mismatch --methods opd,gkd,sft,tropd,tropd:trust_region_loss=divergence,opd:teacher_collapse_logp=-6.9:collapse_repair=true --jobs 2
	$(LAB) --lr-schedule constant --world ambiguous --methods grpo,rlsd,egrsd,cl-egrsd,egrsd:gate_tau=mean,egrsd:delta_centering=mean,opsd,sft --jobs 2
	$(LAB) --lr-schedule constant --world ambiguous-noreader --methods grpo,rlsd,egrsd,cl-egrsd,egrsd:self_teacher_check=warn,opsd,sft --jobs 2
	$(LAB) --lr-schedule constant --world privileged --methods opsd,atesd,opsd:teacher_collapse_logp=-0.69:collapse_repair=true,grpo,rlsd,egrsd,cl-egrsd,sft --jobs 2
	$(LAB) --lr-schedule constant --world privileged-cold --methods opsd,atesd,atesd:teacher_collapse_logp=-6.9,atesd:collapse_repair=false:teacher_collapse_logp=-6.9,atesd:alpha_prior_mean=null:teacher_collapse_logp=-6.9,opsd:teacher_collapse_logp=-6.9,opsd:teacher_collapse_logp=-6.9:collapse_repair=true,opsd:teacher_collapse_logp=-0.69:collapse_repair=true,grpo,rlsd,egrsd,egrsd:weight_normalization=rollout,sft --jobs 2
	$(LAB) --lr-schedule constant --world ambiguous-reader --methods grpo,rlsd,egrsd,sft --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations --lr-schedule constant --world ambiguous-noreader --methods grpo,rlsd:delta_centering=mean,egrsd:delta_centering=mean:self_teacher_check=warn --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations --lr-schedule constant --world privileged-cold --methods opsd:learning_rate=3e-4,opsd:teacher_collapse_logp=-6.9:learning_rate=3e-4,atesd:learning_rate=3e-4:collapse_repair=false:alpha_prior_mean=null:teacher_collapse_logp=-6.9 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/exposure-prior --lr-schedule constant --world privileged-cold --methods opsd,opsd:teacher_collapse_logp=-6.9,atesd:collapse_repair=false:alpha_prior_mean=null:teacher_collapse_logp=-6.9,atesd:collapse_repair=false:teacher_collapse_logp=-6.9 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/exposure-prior --lr-schedule constant --world arith --methods opsd,atesd:collapse_repair=false:alpha_prior_mean=null:teacher_collapse_logp=-6.9,atesd:collapse_repair=false:teacher_collapse_logp=-6.9 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/boundary-floor --lr-schedule constant --world long-chains --methods motab:boundary_floor=0.5 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/stray-reduction --lr-schedule constant --world long-chains --methods motab:stray_reduction=max:monitor_signal=teacher_nll:fixed_boundary=6.9 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/stray-reduction --lr-schedule constant --world arith --methods motab:stray_reduction=max:monitor_signal=teacher_nll:fixed_boundary=6.9 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/lr-schedule --lr-schedule linear --world long-chains --methods opd,gkd,sft,motab --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/lr-schedule --lr-schedule linear --world arith --methods opd,gkd,sft,motab --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-guard --lr-schedule constant --world privileged-cold --methods egrsd:teacher_collapse_logp=-6.9 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-guard --lr-schedule constant --world ambiguous-noreader --methods egrsd:teacher_collapse_logp=-6.9:self_teacher_check=warn --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-epsilon --lr-schedule constant --world privileged-cold --methods egrsd:epsilon_w=1.0,egrsd:epsilon_w=1.0:teacher_collapse_logp=-6.9 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-epsilon --lr-schedule constant --world ambiguous-reader --methods egrsd:epsilon_w=1.0,egrsd:epsilon_w=1.0:teacher_collapse_logp=-6.9 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-weights --lr-schedule constant --world ambiguous --methods grpo,rlsd:weight_normalization=rollout,egrsd:weight_normalization=rollout --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/egrsd-penalized --lr-schedule constant --world ambiguous --methods grpo,rlsd:teacher_rollouts=penalized,egrsd:teacher_rollouts=penalized,cl-egrsd:teacher_rollouts=penalized --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/self-distillation --lr-schedule constant --world ambiguous --methods opsd,atesd,atesd:teacher_collapse_logp=-6.9,opsd:teacher_collapse_logp=-6.9:collapse_repair=true,opsd:teacher_collapse_logp=-0.69:collapse_repair=true --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/tropd-parts --lr-schedule constant --world mismatch --methods opd,tropd,tropd:collapse_repair=false:teacher_collapse_logp=null,tropd:guidance_prob_start=0,tropd:trust_threshold=0 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/collapse-repair --lr-schedule constant --world long-chains --methods opd,opd:teacher_collapse_logp=-6.9:collapse_repair=true --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/trust-threshold --lr-schedule constant --world mismatch --methods tropd:trust_threshold=0.1:trust_region_loss=k1 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/trust-threshold --lr-schedule constant --world arith --methods tropd:trust_threshold=0.1:trust_region_loss=k1 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/grpo-settings/linear --world arith --methods grpo,grpo:learning_rate=3e-5,grpo:learning_rate=1e-4 --jobs 2
	$(LAB) --output-dir benchmarks/results/ablations/grpo-settings --lr-schedule constant --world arith --methods grpo,grpo:learning_rate=3e-5,grpo:learning_rate=1e-4,grpo:learning_rate=1e-4:loss_type=grpo,grpo:num_generations=16,grpo:num_generations=16:learning_rate=1e-4 --jobs 2

test: bootstrap
	$(VENV)/bin/ruff check trl_opd tests benchmarks
	$(PY) -m pytest $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check trl_opd tests benchmarks
	$(VENV)/bin/ruff format --check trl_opd tests benchmarks

# build the sdist and wheel, install the wheel into a fresh venv, run `trl-opd --help` and a dry run from it
package-check:
	PYTHON=$(PYTHON) TORCH_CPU="$(TORCH_CPU)" bash .ci/package_check.sh

bench: bootstrap
	$(PY) benchmarks/bench_loss_memory.py

clean:
	rm -rf $(VENV) demo_output lab_output .pytest_cache
