// Package vip keeps binding addresses bindable on the host and says which
// are. It adds every Bind_Address of a binding file to its interface over
// netlink (recording the ones it added, so pruning never touches a foreign
// address), re-adds one that disappears, asks the kernel whether each can
// route to the world, and tells the milter which bindings are live. An
// address counts as present when it is on an interface or a local route
// covers it (127.0.0.0/8 on lo, an AnyIP prefix): the kernel lets a socket
// bind it. Opt-in, it also keeps a marked block of a hosts file mapping
// each binding address to its EHLO name, the one name Sendmail can greet
// with from that address.
//
// Files: provision.go (Provisioner, Want, Result), plan.go (the pure
// decision of what a run does, shared by dry and real runs), request.go
// (kernel requests), host.go (reading the host: addresses, interfaces,
// local routes, the bindability rule), state.go (ownership record),
// events.go (the one address and route event subscription), watch.go
// (provision --watch), presence.go (the milter's view), routes.go (check
// --routes), hosts.go (the pure plan of the hosts-file block), hostsfile.go
// (reading and writing the hosts file).
package vip
