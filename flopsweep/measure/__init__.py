"""The measure stage: FLOPs counted at the dispatcher (formulas, count), sizes and memory, timings, the module
profile, and meta devices that behave like the CPU. Works on any ``nn.Module``; it never prints, never logs, and
knows nothing of configs, jobs or stores."""
