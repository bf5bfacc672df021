"""`imgsim serve`: an HTTP service over a published index, and its explorer."""
