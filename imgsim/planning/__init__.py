"""`imgsim plan`: what a run will cost before it starts: the input counted, times and prices estimated."""
