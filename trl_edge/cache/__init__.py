"""Teacher logit cache: score once, store compactly, read exactly."""
