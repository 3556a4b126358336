"""Small operations on protobuf messages that the schema's generated classes do not offer."""


def copy_field(source, target, name):
    """Copy field ``name`` from ``source`` to ``target`` when set: scalars, messages, repeated or not."""
    field = source.DESCRIPTOR.fields_by_name[name]
    if field.is_repeated:
        values = getattr(source, name)
        if field.message_type is not None:
            for value in values:
                getattr(target, name).add().CopyFrom(value)
        else:
            getattr(target, name).extend(values)
    elif source.HasField(name):
        if field.message_type is not None:
            getattr(target, name).CopyFrom(getattr(source, name))
        else:
            setattr(target, name, getattr(source, name))
