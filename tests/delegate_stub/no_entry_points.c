/* A shared library that is not a TFLite delegate: it has none of the plugin entry points. */
int not_a_delegate = 1;
