"""`mimjax study`: MAE against the GPA arms, seeds, intervals (run: the driver; evaluate: features, probe, k-NN, the premise; stats; report)."""
