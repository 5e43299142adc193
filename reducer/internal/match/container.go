package match

// shortIDLen is how many digits of a container id name it, as docker ps
// shows them.
const shortIDLen = 12

// shortID returns the short form of a container id.
func shortID(id string) string {
	if len(id) > shortIDLen {
		return id[:shortIDLen]
	}
	return id
}
