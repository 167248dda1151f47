package stack

// List calls fn with every entry the merged directory v shows (each name once, from the topmost layer that has
// it; markers, whiteouts and what they hide left out) and the index of the layer it comes from, until fn returns
// an error, which List returns. A layer directory that cannot be read is an *Error.
func (rd *Reader) List(v View, fn func(li int, e *Entry) error) error {
	seen := make(map[string]bool)
	skip := func(name string) bool { return seen[name] }
	for li := range rd.Layers {
		d := v.Dir(li)
		var hides []string // names this layer whites out for the layers below, with markers beside them
		if d.Meta >= 0 {
			// A marker directory that cannot be read is an error, as in Lookup: the listing would show what the
			// user deleted.
			err := ReadMeta(d.Meta, func(e *MetaEntry) error {
				if e.Kind == MetaWhiteout {
					hides = append(hides, e.Hides)
				}
				return nil
			})
			if err != nil {
				return &Error{Layer: li, Op: "reading the unionfs-fuse whiteouts of", Name: ".", Err: err}
			}
		}
		if d.Fd >= 0 {
			if rd.Listed != nil {
				rd.Listed(li)
			}
			c := DirContext{Aufs: rd.Layers[li].Aufs, AtRoot: d.AtRoot, Opacity: d.Opacity, Skip: skip}
			err := ReadDir(d.Fd, c, func(e *Entry) error {
				switch e.Kind {
				case Shown:
					seen[e.Name] = true
					return fn(li, e)
				case Whiteout:
					seen[e.Name] = true
				case AufsWhiteout:
					hides = append(hides, e.Hides)
				}
				return nil
			})
			if err != nil {
				if e, ok := err.(*Error); ok {
					e.Layer = li
					return e
				}
				return &Error{Layer: li, Op: "reading directory", Name: ".", Err: err}
			}
		}
		for _, h := range hides {
			seen[h] = true
		}
	}
	return nil
}
