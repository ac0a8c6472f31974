"""Loss functions of the two models (pure functions, plus AutoLink's frozen perceptual network)."""
