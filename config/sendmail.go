package config

// setSendmailSocketmap parses Sendmail_Socketmap with the same notation as
// Milter_Listen; the Sendmail renderer writes it in Sendmail's own notation.
func setSendmailSocketmap(d *decoder, n *Node, _ *values) {
	l, err := ParseListen(n.Value)
	if err != nil {
		d.bad(n, "%v", err)
		return
	}
	d.cfg.SendmailSocketmap = l
}
