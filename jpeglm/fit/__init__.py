"""Will it fit, and how fast: ahead-of-time compiles for any TPU slice, cost and memory
estimates, the layout planner, and the one table of chip facts that `launch/` reads too."""
