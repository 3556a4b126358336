"""The edge where files meet objects: prototxt, caffemodel, schema, templates and atomic writes."""
