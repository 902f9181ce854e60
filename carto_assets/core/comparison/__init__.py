"""Comparing studies (pure computation): units matched across models,
layer match shares, CKA, shared concepts, one joint embedding."""
