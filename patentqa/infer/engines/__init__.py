"""Engine implementations; import them through patentqa.infer.engine.make_engine."""
