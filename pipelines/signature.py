"""A compiled pipeline's parameters as ``{name: (type_name, default)}`` for config checks."""


def signature(pipeline) -> dict[str, tuple[str, object]]:
    return {name: (spec.type, spec.default) for name, spec in pipeline.component_spec.inputs.items()}
