"""Run configs, importable so installed tools can find the defaults (`configs.jpeglm`)."""
