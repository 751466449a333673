"""Every metric name, in one place: they are the keys of ``result.json`` and the MLflow metric keys."""

FLOPS_FORWARD = "flops/forward"
FLOPS_BACKWARD = "flops/backward"
FLOPS_OPTIMIZER = "flops/optimizer"
FLOPS_STEP = "flops/step"
FLOPS_OPTIMIZER_MEAN = "flops/optimizer_mean"  # per step over many, where the counted step has periodic work (GaLore)
FLOPS_FORWARD_ELEMENTWISE = "flops/forward_elementwise"
FLOPS_BACKWARD_ELEMENTWISE = "flops/backward_elementwise"
FLOPS_FORWARD_ANALYTIC = "flops/forward_analytic"
MACS_FORWARD = "macs/forward"

PARAMS = "size/params"
PARAMS_ACTIVE = "size/params_active"  # a token's: shared parameters plus its top-k experts (= params when dense)
PARAMS_TRAINABLE = "size/params_trainable"
PARAMS_EMBEDDING = "size/params_embedding"
WEIGHTS_BYTES = "size/weights_bytes"
BUFFERS_BYTES = "size/buffers_bytes"
GRADS_BYTES = "size/grads_bytes"
OPTIMIZER_STATE_BYTES = "size/optimizer_state_bytes"
ACTIVATIONS_BYTES = "size/activations_bytes"
TRAIN_PEAK_BYTES = "size/train_peak_bytes"
STEP_PEAK_BYTES = "size/step_peak_bytes"      # a simulated step's peak on meta, temporaries included
TEMPORARY_BYTES = "size/temporary_bytes"      # the temporaries alive at that peak
MEASURED_PEAK_BYTES = "size/measured_peak_bytes"

TIME_FORWARD = "time/forward_s"
TIME_BACKWARD = "time/backward_s"
TIME_OPTIMIZER = "time/optimizer_s"
TIME_STEP = "time/step_s"
TIME_STEP_SPREAD = "time/step_iqr_s"
TIME_STEP_CV = "time/step_cv"

# a step's time predicted from its counted ops and the device's calibration profile (measure/predict.py)
TIME_FORWARD_PREDICTED = "time/forward_predicted_s"
TIME_BACKWARD_PREDICTED = "time/backward_predicted_s"
TIME_OPTIMIZER_PREDICTED = "time/optimizer_predicted_s"
TIME_STEP_PREDICTED = "time/step_predicted_s"
TIME_STEP_PREDICTED_RATIO = "time/step_predicted_ratio"   # predicted / measured median, where the step was timed
PREDICTED_SHARE_COMPUTE = "time/predicted_share_compute"  # of the predicted step: compute-bound ops ...
PREDICTED_SHARE_MEMORY = "time/predicted_share_memory"    # ... memory-bound ops ...
PREDICTED_SHARE_LAUNCH = "time/predicted_share_launch"    # ... and launches (eager dispatch), adding up to 1
MFU_PREDICTED = "speed/mfu_predicted"                     # model FLOPs / (predicted step x peak)
TIME_COMPILE = "time/compile_s"                           # measure.compile=true: torch.compile's first step, apart

# workload=generate: a prompt's prefill, then decode steps with a KV cache (flops/forward is the prefill's)
FLOPS_PREFILL = "flops/prefill"
FLOPS_DECODE_TOKEN_FIRST = "flops/decode_token_first"  # a decode step per sequence, at the first context
FLOPS_DECODE_TOKEN_LAST = "flops/decode_token_last"    # ... at the last context
FLOPS_DECODE = "flops/decode"                          # every decode step, the whole batch
FLOPS_GENERATION = "flops/generation"                  # prefill + decode, the whole batch
KV_CACHE_BYTES = "size/kv_cache_bytes"                 # the cache at the last context, the whole batch
KV_CACHE_BYTES_PER_TOKEN = "size/kv_cache_bytes_per_token"
CACHE_STATE_BYTES = "size/cache_state_bytes_per_sequence"  # what a sequence's cache holds whatever its tokens
DECODE_WEIGHTS_READ_BYTES = "size/decode_weights_read_bytes"  # the weights one decode step reads
ROUTED_EXPERT_BYTES = "size/routed_expert_bytes"       # a mixture of experts: every routed expert's weights
TIME_TTFT = "time/ttft_s"                              # time to first token: the prefill
TIME_TPOT = "time/tpot_s"                              # time per output token (a decode step), first contexts
TIME_TPOT_SPREAD = "time/tpot_iqr_s"
TIME_TPOT_LAST = "time/tpot_last_s"                    # ... at the last contexts
TIME_GENERATION = "time/generation_s"                  # TTFT + every decode step
OUTPUT_TOKENS_PER_S = "speed/output_tokens_per_s"      # decoded tokens per second, the whole batch
NEW_TOKENS = "config/new_tokens"

SAMPLES_PER_S = "speed/samples_per_s"
TOKENS_PER_S = "speed/tokens_per_s"
FLOPS_PER_S = "speed/flops_per_s"
MFU = "speed/mfu"

# config values logged as numbers too, so that runs can be filtered and plotted by them
BATCH_SIZE = "config/batch_size"
SEQ_LEN = "config/seq_len"
CONFIG_WIDTH = "config/d_model"   # the model's width, whatever its family calls it (d_model, embed_dim, hidden_size)
CONFIG_LAYERS = "config/layers"   # its depth (n_layer, n_layers, num_hidden_layers)
CONFIG_HEADS = "config/heads"     # its attention heads (n_head, num_heads, num_attention_heads)

# training-cost projections (flopsweep-project): one metric per method and quantity
PROJECTION_METHODS = {"counted": "counted", "6ND": "6ND", "6ND+attention": "6ND_attention",  # method -> key part
                      "2ND": "2ND", "2ND+attention": "2ND_attention"}  # inference (forward only)
PROJECTION_QUANTITIES = ("flops", "gpu_hours", "days", "cost", "energy_kwh")


def projection_metric(method: str, quantity: str) -> str:
    return f"projection/{PROJECTION_METHODS[method]}/{quantity}"


# the family's closed form for backward, where it has one (the decoder: full, frozen_backbone and lora)
FLOPS_BACKWARD_ANALYTIC = "flops/backward_analytic"

# per-device figures of a parallel layout (flopsweep-project --dp --tp --pp --zero): one metric per quantity
PER_DEVICE_QUANTITIES = ("params", "flops", "weights_bytes", "buffers_bytes", "grads_bytes", "optimizer_state_bytes",
                         "activations_bytes", "memory_bytes")
PIPELINE_BUBBLE = "projection/pipeline_bubble"


def per_device_metric(quantity: str) -> str:
    return f"projection/per_device/{quantity}"


# what a budget buys (flopsweep-project budget): its FLOPs, the tokens each method says they train (or process) the
# model on, and each scaling rule's compute-optimal parameters and tokens
BUDGET_FLOPS = "budget/flops"
BUDGET_GPU_HOURS = "budget/gpu_hours"  # a FLOPs budget's time at the MFU; the others are time or money already


def budget_tokens_metric(method: str) -> str:
    return f"budget/tokens/{PROJECTION_METHODS[method]}"


def budget_optimum_metric(rule: str, quantity: str) -> str:
    """``rule``: the scaling rule or fit (``rule``, ``hoffmann``, ...); ``quantity``: params, tokens or loss."""
    return f"budget/optimum/{rule}/{quantity}"


# serving projections (flopsweep-project --serve): each over the batch (the MLflow metric's step)
SERVING_QUANTITIES = ("ttft_s", "tpot_s", "request_s", "output_tokens_per_s_per_gpu", "gpu_hours_per_m_output",
                      "usd_per_m_input", "usd_per_m_output", "kwh_per_m_output")
SERVING_LARGEST_BATCH = "serving/largest_batch"


def serving_metric(quantity: str) -> str:
    return f"serving/{quantity}"


# a calibration profile's run (flopsweep-calibrate): what its fitted curves say of the part
CALIBRATION_BANDWIDTH = "calibration/bandwidth_gbs"   # the largest elementwise kernel's bytes per second
CALIBRATION_LAUNCH = "calibration/launch_us"          # an eager op issued from Python
CALIBRATION_LAUNCH_BACKWARD = "calibration/launch_backward_us"


def calibration_matmul_metric(dtype: str) -> str:
    """The fitted matmul throughput of large shapes in ``dtype``, TFLOP/s."""
    return f"calibration/matmul_tflops_{dtype}"


# a parallel layout counted rank by rank (parallel.*, run/parallel.py): per GPU, the busiest rank's unless said
PARALLEL_GPUS = "parallel/gpus"                                  # dp x tp x pp x cp
PARALLEL_MICRO_BATCHES = "parallel/micro_batches"                # per data-parallel rank and step
PARALLEL_MEMORY_PER_GPU = "parallel/memory_per_gpu_bytes"        # the peak, every micro-batch in flight
PARALLEL_STATES_PER_GPU = "parallel/states_per_gpu_bytes"        # weights, gradients and optimizer state held
PARALLEL_FITS = "parallel/fits"                                  # 1 where the peak fits the part predicted for, else 0
PARALLEL_ACTIVATIONS_PER_GPU = "parallel/activations_per_gpu_bytes"  # saved for backward, every micro-batch in flight
FLOPS_STEP_PER_GPU = "flops/step_per_gpu"                        # matmul FLOPs of a step on the most loaded GPU
TIME_COMM_EXPOSED = "time/comm_exposed_s"                        # communication that compute does not hide
TIME_BUBBLE = "time/bubble_s"                                    # the pipeline schedule's idle time
HFU_PREDICTED = "speed/hfu_predicted"                            # hardware FLOPs (recomputation too) / (step x peak)
TFLOPS_PER_GPU_PREDICTED = "speed/tflops_per_gpu_predicted"      # model TFLOP/s per GPU
TOKENS_PER_S_PER_GPU_PREDICTED = "speed/tokens_per_s_per_gpu_predicted"


def comm_metric(collective: str) -> str:
    """Bytes of one collective (all_gather, reduce_scatter, all_reduce, all_to_all, send, recv) a GPU's step moves."""
    return f"comm/{collective}_bytes_per_gpu"
