"""Live processing: one engine (run tracking, ROI decision, map outputs) and two executors
(inline in one process, fan-out over worker processes) of the same accumulator."""
