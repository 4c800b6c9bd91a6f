"""The shims are helper modules for transformers' mixins, not tests of their own."""

collect_ignore = ["shims"]
