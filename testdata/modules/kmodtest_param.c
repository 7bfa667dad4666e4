// SPDX-License-Identifier: GPL-2.0
// Carries every common .modinfo field: parameters, aliases, firmware, softdep, author.
#include <linux/module.h>
#include <linux/moduleparam.h>

static char *greeting = "hello";
module_param(greeting, charp, 0444);
MODULE_PARM_DESC(greeting, "Greeting printed at load");

static int count = 1;
module_param(count, int, 0644);
MODULE_PARM_DESC(count, "How many times to greet");

static bool quiet;
module_param(quiet, bool, 0444);

static int __init kmodtest_param_init(void)
{
	int i;

	for (i = 0; i < count && !quiet; i++)
		pr_info("kmodtest_param: %s\n", greeting);
	return 0;
}
static void __exit kmodtest_param_exit(void) { }
module_init(kmodtest_param_init);
module_exit(kmodtest_param_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("2.3.4");
MODULE_AUTHOR("kmodctl developers <dev@kmodctl.invalid>");
MODULE_AUTHOR("Second Author");
MODULE_DESCRIPTION("kmodctl test module: parameters and metadata");
MODULE_ALIAS("kmodtest-param");
MODULE_ALIAS("pci:v0000FFFFd0000FFFEsv*sd*bc*sc*i*");
MODULE_FIRMWARE("kmodtest/firmware.bin");
MODULE_SOFTDEP("pre: kmodtest_base");
