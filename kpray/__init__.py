"""kpray: self-supervised keypoint and skeleton discovery on Ray."""
