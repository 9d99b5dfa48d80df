// Package vip makes binding addresses real on the host: it adds every
// Bind_Address of a binding file to its interface over netlink (and records
// which ones it added, so pruning never touches a foreign address), watches
// for addresses that disappear, asks the kernel whether each address can
// route to the world, and tells the milter which bindings are live.
//
// Address plumbing, ownership records, the watcher, route checks and
// presence tracking live in files of their own.
package vip
